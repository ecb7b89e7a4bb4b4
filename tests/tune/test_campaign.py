"""Campaigns end to end on a real local Ray: trials are Ray Train runs, ASHA stops some, every trial leaves its
record on storage (S3 too), impossible points are skipped or recorded, an erroring trial does not stop the rest."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime

import pytest

from tests.conftest import CAMPAIGN_EPOCHS
from unet_dist.errors import ConfigError
from unet_dist.runs import CampaignDir, RunDir
from unet_dist.storage import resolve
from unet_dist.train.fault import FAULT_ENV
from unet_dist.tune import run_campaign

EPOCHS = 6
TRIAL_KEYS = {"kind", "campaign", "trial_id", "params", "status", "epochs", "best", "best_checkpoint", "config"}


def _campaign(small_config, dataset: str, storage: str, space: dict, *overrides: str):
    cfg = small_config(dataset, storage, "data.crop_size=64", "train.log_images=0", "train.num_to_keep=1", *overrides)
    return cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"search_space": space})})


@pytest.mark.ray
@pytest.mark.s3
def test_backbone_by_unpooling_campaign_on_s3(shared_campaign) -> None:
    """The session's shared campaign (tests/conftest.py): 4 trials on downscaled ISBI on the S3 server, ASHA."""
    cfg, summary, s3_uri = shared_campaign["cfg"], shared_campaign["summary"], shared_campaign["s3"]
    print("campaign:", summary.to_json())

    assert summary.status == "finished" and len(summary.trials) == 4 and summary.uri == f"{s3_uri}/{shared_campaign['campaign']}"
    assert summary.counts.get("early_stopped", 0) >= 1, summary.counts  # ASHA stopped at least one trial
    assert summary.counts.get("early_stopped", 0) + summary.counts.get("finished", 0) == 4
    campaign = CampaignDir(resolve(summary.uri))
    record = campaign.read_record()
    assert record["status"] == "finished" and record["metric"] == "val_image_mean_iou" and record["scheduler"] == "asha"
    assert "unetdist-test-secret" not in (campaign.loc / "campaign.json").read_text()
    seen = set()
    for trial_id, run in campaign.trials().items():
        rec = run.read_record()
        assert TRIAL_KEYS <= set(rec) and rec["kind"] == "trial" and rec["trial_id"] == trial_id
        seen.add((rec["params"]["model.backbone"], rec["params"]["model.unpooling"]))
        rows = run.metrics()
        assert [r["epoch"] for r in rows] == list(range(len(rows))) and rec["epochs"] == len(rows)
        assert rec["status"] in ("finished", "early_stopped") and rows
        if rec["status"] == "finished":
            assert len(rows) == CAMPAIGN_EPOCHS
        assert rec["config"]["model"]["backbone"] == rec["params"]["model.backbone"]
        # a trial ended when its worker last wrote (its last epoch's event), not when the campaign closed it
        last_event = max(e["time"] for e in run.events())
        assert abs(datetime.fromisoformat(rec["ended_at"]).timestamp() - last_event) < 5, (rec["ended_at"], last_event)
        hparams = run.loc / "tensorboard" / "hparams"
        assert hparams.exists() and any(c.name.startswith("events.out.tfevents") for c in hparams.ls())
    assert seen == {(b, u) for b in ("scratch", "resnet18") for u in ("transpose", "bilinear")}

    best = summary.best
    assert best["best_checkpoint"].startswith(summary.uri) and best["best_value"] == max(
        t["best_value"] for t in summary.trials if t["best_value"] is not None)
    proc = subprocess.run([sys.executable, "-m", "unet_dist", "evaluate", best["best_checkpoint"], "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fresh["image_mean_iou"] == pytest.approx(best["best_value"], abs=1e-9)  # the monitor: val_image_mean_iou
    assert fresh["iou"] == pytest.approx(best["best_val_iou"], abs=1e-9)

    with pytest.raises(ConfigError, match="already exists: add --resume"):
        run_campaign(cfg, progress=False)


@pytest.mark.slow
@pytest.mark.ray
def test_impossible_points_are_skipped_or_recorded_invalid(small_config, ray_local, synthetic_dataset, tmp_path) -> None:
    grid = {"model.unpooling": {"grid": ["transpose", "maxunpool"]}, "model.pooling": {"grid": ["max", "avg"]}}
    cfg = _campaign(small_config, synthetic_dataset, str(tmp_path), grid, "train.epochs=1", "tune.name=grid",
                    "tune.scheduler=fifo", "tune.num_samples=1", "resources.num_workers=1")
    summary = run_campaign(cfg, progress=False)
    assert summary.counts == {"finished": 3}
    assert [s["params"] for s in summary.skipped] == [{"model.unpooling": "maxunpool", "model.pooling": "avg"}]
    assert CampaignDir(resolve(summary.uri)).read_record()["skipped"] == summary.skipped

    sampled = {"model.backbone": {"choice": ["scratch", "resnet18"]}, "model.unpooling": {"choice": ["maxunpool", "transpose"]}}
    cfg = _campaign(small_config, synthetic_dataset, str(tmp_path), sampled, "train.epochs=1", "tune.name=sampled",
                    "tune.scheduler=fifo", "tune.num_samples=4", "resources.num_workers=1")
    summary = run_campaign(cfg, progress=False)  # the sampling is seeded by train.seed: the same points every run
    invalid = [t for t in summary.trials if t["status"] == "invalid"]
    assert invalid and all(t["params"] == {"model.backbone": "resnet18", "model.unpooling": "maxunpool"} for t in invalid)
    assert all("maxunpool" in t["error"] and t["epochs"] == 0 for t in invalid)
    assert summary.counts["finished"] == 4 - len(invalid) >= 1


@pytest.mark.ray
def test_an_erroring_trial_is_recorded_and_the_others_finish(small_config, ray_local, synthetic_dataset, tmp_path,
                                                            monkeypatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "rank=0,epoch=0,step=0,raise=boom in trial,if=model.unpooling:bilinear")
    space = {"model.unpooling": {"grid": ["bilinear", "transpose"]}}  # one trial errors while the other runs beside it
    cfg = _campaign(small_config, synthetic_dataset, str(tmp_path), space, "train.epochs=1", "tune.name=err",
                    "tune.scheduler=fifo", "tune.num_samples=1", "train.max_failures=0", "resources.num_workers=1",
                    "tune.max_concurrent_trials=2")
    from rich.console import Console

    log = io.StringIO()  # not a terminal: what `ray job logs` or CI shows (issue 22)
    summary = run_campaign(cfg, console=Console(file=log, width=200, force_terminal=False))
    by_unpool = {t["params"]["model.unpooling"]: t for t in summary.trials}
    assert by_unpool["bilinear"]["status"] == "error" and "boom in trial" in by_unpool["bilinear"]["error"]
    assert by_unpool["transpose"]["status"] == "finished"
    ids = {u: t["trial_id"].rsplit("_", 1)[-1] for u, t in by_unpool.items()}
    lines = log.getvalue().splitlines()
    for unpool, tid in ids.items():
        assert f"trial {tid} started: unpooling={unpool}" in lines, lines
    assert f"trial {ids['bilinear']} error: " in log.getvalue() and "boom in trial" in log.getvalue()
    assert any(line.startswith(f"trial {ids['transpose']} finished after 1 epochs") for line in lines), lines
    assert summary.status == "finished" and summary.best["params"]["model.unpooling"] != "bilinear"
    run = RunDir(resolve(summary.uri) / "trials" / by_unpool["bilinear"]["trial_id"])
    assert "boom in trial" in run.read_record()["error"]


def test_trial_events_are_one_line_each_for_a_log() -> None:
    """Issue 22: where stdout is not a terminal a campaign prints trial events (started, reported epoch with the
    metric, its end) as they are seen, instead of nothing until the end."""
    from unet_dist.tune.campaign import TrialEvents

    events = TrialEvents(["model.backbone", "train.lr"])

    def row(tid, status, epochs, last=None, best=None, error=None):
        return {"trial_id": f"abc_{tid}", "status": status, "epochs": epochs, "last_value": last, "best_value": best,
                "error": error, "params": {"model.backbone": "resnet18", "train.lr": 0.003}}

    assert events.update([row("00000", "running", 0)], "val_image_mean_iou") == [
        "trial 00000 started: backbone=resnet18, lr=0.0030"]
    assert events.update([row("00000", "running", 0)], "val_image_mean_iou") == []  # nothing new, nothing printed
    assert events.update([row("00000", "running", 2, 0.61, 0.61), row("00001", "error", 0, error="CUDA out of memory")],
                         "val_image_mean_iou") == [
        "trial 00000 epoch 2: image mIoU 0.6100 (best 0.6100)",
        "trial 00001 started: backbone=resnet18, lr=0.0030", "trial 00001 error: CUDA out of memory"]
    assert events.update([row("00000", "early_stopped", 3, 0.58, 0.61)], "val_image_mean_iou") == [
        "trial 00000 epoch 3: image mIoU 0.5800 (best 0.6100)", "trial 00000 stopped early after 3 epochs, best 0.6100"]


def test_the_trials_table_is_readable_at_80_columns() -> None:
    """The live view's and `unet-dist tune`'s closing table: searched values share the width as `collect`'s do."""
    from rich.console import Console

    from unet_dist.tune.campaign import trials_table

    keys = ["model.backbone", "model.unpooling", "train.lr", "model.activation"]
    rows = [{"trial_id": f"f3d8d_{i:05d}", "status": ["finished", "early_stopped"][i % 2], "epochs": 4 - i % 2,
             "params": {"model.backbone": "resnet18", "model.unpooling": "pixelshuffle", "train.lr": 0.000318 * (i + 1),
                        "model.activation": "leaky_relu"}, "val_iou": 0.8077, "best_value": 0.5924, "images_per_s": 13.4}
            for i in range(12)]
    out = Console(width=80, record=True, color_system=None)
    out.print(trials_table(rows, keys, "val_image_mean_iou", title="top 5 of 12 trials", limit=5))
    lines = out.export_text().splitlines()
    assert max(map(len, lines)) <= 80, lines
    header = next(line for line in lines if line.lstrip().startswith("trial")).split()
    assert header[:2] == ["trial", "status"] and header[-6:] == ["ep", "IoU", "best", "img", "mIoU", "img/s"], header
    assert all(len(c) >= 5 for c in header if c.endswith("…")), header  # never cut below 4 characters
    body = "\n".join(lines)
    assert "00000  done" in body and " early " in body and "pixel…" in body and "0.0016" in body


def test_a_stopped_trial_ends_at_its_last_write_record_or_event(tmp_path) -> None:
    """ASHA stops a trial at its last report, after its epoch event and before run.json follows: the trial ended at
    whichever of the two was written last, never at the time the campaign closes it."""
    from unet_dist.tune.campaign import last_write

    run = RunDir(resolve(str(tmp_path / "t0")))
    run.write_record({"status": "running", "updated_at": "2026-12-07T23:23:49+00:00"})
    assert last_write(run, run.read_record()) == "2026-12-07T23:23:49+00:00"
    run.append("events.jsonl", {"event": "epoch_end", "epoch": 3, "time": datetime.fromisoformat("2026-12-07T23:24:17+00:00").timestamp()})
    assert last_write(run, run.read_record()) == "2026-12-07T23:24:17+00:00"
    assert last_write(run, {"status": "running", "updated_at": "2026-12-07T23:30:00+00:00"}) == "2026-12-07T23:30:00+00:00"
