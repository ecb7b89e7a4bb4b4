"""MLflow against a real `mlflow server` on 127.0.0.1 (SQLite store, local artifacts), read back through
MlflowClient: the shared ASHA campaign logged live as it trained (``tracking.mlflow_uri``), the same campaign and
single run mirrored from storage (`unet-dist collect STORAGE --mlflow URI`), a second sync that logs nothing new, a
server stopped in the middle of a run (training green, the backfill completes it), a server that is down, and
credentials kept out of the URI."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from unet_dist.cli import main
from unet_dist.runs import CampaignDir, RunDir, content_digest, report_location
from unet_dist.storage import resolve
from unet_dist.tracking import PARENT_TAG, TAG_KIND, TAG_URI, param_value

pytestmark = pytest.mark.timeout(300)


def _sync(capsys, storage: str, server: str, experiment: str, *extra: str) -> str:
    assert main(["collect", storage, "--mlflow", server, "--experiment", experiment, "--no-write", "--format", "json",
                 *extra]) == 0
    return capsys.readouterr().err


def _check_campaign(client: Any, experiment: str, campaign: CampaignDir) -> dict[str, Any]:
    """The campaign as a parent run and its 4 trials nested under it, each with its params, status, metric history
    and run.json as on storage; returns the experiment's runs by folder URI."""
    exp = client.get_experiment_by_name(experiment)
    runs = {r.data.tags[TAG_URI]: r for r in client.search_runs([exp.experiment_id], max_results=100)}
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
    return runs


def test_a_campaign_and_a_run_read_back_through_mlflow(shared_campaign: dict, mlflow_server, capsys) -> None:
    from mlflow.tracking import MlflowClient

    storage = shared_campaign["local"]
    said = _sync(capsys, storage, mlflow_server.uri, "backfill")
    assert "6 MLflow runs (6 new, 0 updated)" in said, said  # the campaign, its 4 trials, the single run
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("backfill")
    runs = _check_campaign(client, "backfill", CampaignDir(resolve(storage) / shared_campaign["campaign"]))
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


def test_the_campaign_logged_itself_live(shared_campaign: dict, mlflow_server) -> None:
    """The shared campaign ran with ``tracking.mlflow_uri``: each trial's rank 0 logged it as it trained, nested
    under the campaign's run the driver opened first, and the driver closed them all."""
    from mlflow.tracking import MlflowClient

    cfg = shared_campaign["cfg"]
    assert cfg.tracking.mlflow_uri == mlflow_server.uri
    campaign = CampaignDir(resolve(shared_campaign["s3"]) / shared_campaign["campaign"])
    runs = _check_campaign(MlflowClient(mlflow_server.uri), cfg.tracking.experiment, campaign)
    assert len(runs) == 5  # live logging created each run once


def run_status(storage: str) -> str:
    return RunDir(resolve(storage) / "outage").read_record()["status"]


def _stop_server_after_first_epoch(pgid: int) -> Any:
    """A recorder spec that stops the MLflow server (its process group) once rank 0 has logged the first epoch:
    added after the MLflow recorder, so its ``after_report`` runs second."""
    from unet_dist.train import WorkerRecorder

    class StopServer(WorkerRecorder):
        def __init__(self, ctx: Any) -> None:
            self.epoch = None

        def on_epoch_end(self, row: dict, shown: list, state: dict) -> None:
            self.epoch = row["epoch"]

        def after_report(self) -> None:
            if self.epoch == 0:
                os.killpg(pgid, signal.SIGKILL)

    return StopServer


@pytest.mark.ray
def test_a_server_stopped_mid_run_leaves_training_green_and_the_backfill_completes_it(
        small_config, ray_local, synthetic_dataset, tmp_path, mlflow_server, capsys, caplog) -> None:
    from mlflow.tracking import MlflowClient

    from unet_dist.train import fit

    experiment, storage = f"live-{uuid.uuid4().hex[:6]}", str(tmp_path / "runs")
    cfg = small_config(synthetic_dataset, storage, "train.epochs=2", "train.name=outage", "train.log_images=0",
                       "resources.num_workers=1",
                       f"tracking.mlflow_uri={mlflow_server.uri}", f"tracking.experiment={experiment}")
    try:
        with caplog.at_level(logging.WARNING, logger="unet_dist.tracking"):
            t0 = time.monotonic()
            summary = fit(cfg, progress=False, recorders=[_stop_server_after_first_epoch(mlflow_server.proc.pid)])
            took = time.monotonic() - t0
        assert summary.epochs == 2 and run_status(storage) == "finished"
        warned = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
        way_out = f"collect {storage} --mlflow {mlflow_server.uri} --experiment {experiment}"
        assert len(warned) == 1 and way_out in warned[0], warned  # once, with the command that completes it
        assert not mlflow_server.up()
    finally:
        if not mlflow_server.up():
            mlflow_server.start()
    client = MlflowClient(mlflow_server.uri)
    run = RunDir(resolve(storage) / "outage")

    def mirrored() -> Any:
        exp = client.get_experiment_by_name(experiment)
        found = client.search_runs([exp.experiment_id], max_results=10)
        assert [r.data.tags[TAG_URI] for r in found] == [run.uri]  # one MLflow run, whatever logged it
        return found[0]

    got = mirrored()
    assert got.info.status == "RUNNING" and got.data.tags["unet_dist.epochs"] == "0"  # epoch 0, then the outage
    assert [m.step for m in client.get_metric_history(got.info.run_id, "val_loss")] == [0]

    said = _sync(capsys, storage, mlflow_server.uri, experiment)
    assert "1 MLflow runs (0 new, 1 updated)" in said, said
    got = mirrored()
    assert got.info.status == "FINISHED" and got.data.tags["unet_dist.status"] == "finished"
    history = client.get_metric_history(got.info.run_id, "val_loss")
    assert sorted((m.step, m.value) for m in history) == [(r["epoch"], r["val_loss"]) for r in run.metrics()]

    # the run's published report (where jobs/collect.py and make demo put it) goes along, again only when it changed
    report = report_location(resolve(storage), run.loc)
    uploads = []
    for html in ("<html>first</html>", "<html>first</html>", "<html>second</html>"):
        report.write_text(html)
        _sync(capsys, storage, mlflow_server.uri, experiment)
        assert Path(client.download_artifacts(got.info.run_id, "report.html")).read_text() == html
        stored = next(mlflow_server.data.glob(f"artifacts/**/{got.info.run_id}/artifacts/report.html"))
        uploads.append(stored.stat().st_mtime_ns)
    assert uploads[0] == uploads[1] != uploads[2]  # the server's copy was written twice, not three times
    assert client.get_run(got.info.run_id).data.tags["unet_dist.report_sha256"] == hashlib.sha256(b"<html>second</html>").hexdigest()
    print(f"run with the server killed after epoch 0: {took:.1f} s")


def test_export_registers_each_model_as_a_version_and_the_champion_by_alias(shared_campaign: dict, mlflow_server,
                                                                           s3_uri: str, tmp_path, capsys) -> None:
    """``export --mlflow``: each exported model a version pointing at its folder in the store, its card as tags and
    description, linked to the MLflow run its trial logged live; the champion under the alias; exporting again adds
    no version; a local store is refused before anything is copied."""
    from mlflow.tracking import MlflowClient

    storage, store, name = shared_campaign["s3"], f"{s3_uri}/store", f"seg-{uuid.uuid4().hex[:6]}"
    args = ["export", storage, store, "--top", "2", "--mlflow", mlflow_server.uri, "--registered-model", name,
            "--experiment", shared_campaign["cfg"].tracking.experiment, "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["models"]) == 2 and sorted(out["mlflow"]["created"]) == sorted(m["name"] for m in out["models"])
    client = MlflowClient(mlflow_server.uri)
    assert len(client.search_model_versions(f"name = '{name}'")) == 2
    champion = client.get_model_version_by_alias(name, "champion")
    card = json.loads((resolve(store) / out["champion"] / "model.json").read_text())
    assert champion.tags["unet_dist.model"] == out["champion"] and champion.source == f"{store}/{out['champion']}"
    assert champion.tags["unet_dist.sha256"] == content_digest(card["files"])
    assert champion.tags["unet_dist.value"] == param_value(card["monitor"]["value"])
    assert {k: v for k, v in champion.tags.items() if k.startswith("searched.")} == {
        f"searched.{k}": param_value(v) for k, v in card["params"].items()}
    assert f"{card['monitor']['metric']} {card['monitor']['value']:.4f}" in champion.description
    live = client.search_runs([client.get_experiment_by_name("shared-live").experiment_id],
                              f"tags.`{TAG_URI}` = '{card['run']}'")
    assert champion.run_id == live[0].info.run_id  # the trial's own MLflow run, logged as it trained

    assert main(args) == 0  # again: nothing copied, no version added
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["mlflow"]["created"] == [] and again["mlflow"]["versions"] == out["mlflow"]["versions"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    local = tmp_path / "local-store"
    assert main(["export", storage, str(local), "--mlflow", mlflow_server.uri]) == 2
    err = capsys.readouterr().err.strip()
    assert "local folder" in err and "s3://" in err and err.count("\n") == 0 and not local.exists()
