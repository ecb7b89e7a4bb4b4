"""MLflow mirrored from storage (`unet-dist collect STORAGE --mlflow URI`) against a real `mlflow server` on
127.0.0.1 (SQLite store, local artifacts): the shared ASHA campaign and single run read back through MlflowClient,
a second sync that logs nothing new, a server that is down, and credentials kept out of the URI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unet_dist.cli import main
from unet_dist.runs import CampaignDir, RunDir
from unet_dist.storage import resolve
from unet_dist.tracking import PARENT_TAG, TAG_KIND, TAG_URI, param_value

pytestmark = pytest.mark.timeout(300)


def _sync(capsys, storage: str, server: str, experiment: str, *extra: str) -> str:
    assert main(["collect", storage, "--mlflow", server, "--experiment", experiment, "--no-write", "--format", "json",
                 *extra]) == 0
    return capsys.readouterr().err


def test_a_campaign_and_a_run_read_back_through_mlflow(shared_campaign: dict, mlflow_server, capsys) -> None:
    from mlflow.tracking import MlflowClient

    storage = shared_campaign["local"]
    said = _sync(capsys, storage, mlflow_server.uri, "backfill")
    assert "6 MLflow runs (6 new, 0 updated)" in said, said  # the campaign, its 4 trials, the single run
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("backfill")
    runs = {r.data.tags[TAG_URI]: r for r in client.search_runs([exp.experiment_id], max_results=100)}
    campaign = CampaignDir(resolve(storage) / shared_campaign["campaign"])
    parent = runs[campaign.uri]
    assert parent.data.tags[TAG_KIND] == "campaign" and parent.info.status == "FINISHED"
    assert json.loads(parent.data.params["search_space"]) == campaign.read_record()["search_space"]
    trials = campaign.trials()
    assert len(trials) == 4
    for trial in trials.values():
        got, record = runs[trial.uri], trial.read_record()
        assert got.data.tags[PARENT_TAG] == parent.info.run_id and got.data.tags["unet_dist.status"] == record["status"]
        assert got.info.status == "FINISHED"  # finished and early_stopped both ended well
        for key, value in record["params"].items():
            assert got.data.params[key] == got.data.params[f"searched.{key}"] == param_value(value)
        history = client.get_metric_history(got.info.run_id, "val_image_mean_iou")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (row["epoch"], row["val_image_mean_iou"]) for row in trial.metrics()]
        local = client.download_artifacts(got.info.run_id, "run.json")
        assert json.loads(Path(local).read_text()) == record
    single = runs[RunDir(resolve(storage) / shared_campaign["run"]).uri]
    assert PARENT_TAG not in single.data.tags and single.data.params["train.epochs"] == "2"

    again = _sync(capsys, storage, mlflow_server.uri, "backfill")
    assert "(0 new," in again and "0 metric values logged" in again, again  # idempotent: nothing logged twice
    assert len(client.search_runs([exp.experiment_id], max_results=100)) == len(runs)


def test_a_server_that_is_down_is_one_line_and_credentials_stay_out_of_uris(shared_campaign: dict, capsys) -> None:
    from tests.guard import free_port

    down = f"http://127.0.0.1:{free_port()}"
    assert main(["collect", shared_campaign["local"], "--mlflow", down, "--no-write", "--format", "json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "did not answer" in err and "storage is unchanged" in err and err.count("\n") == 0 and "Traceback" not in err
    assert main(["collect", shared_campaign["local"], "--mlflow", "http://alice:hunter2@127.0.0.1:5000", "--no-write"]) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_USERNAME" in err and "hunter2" not in err and "alice" not in err
