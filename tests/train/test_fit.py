"""End to end: 2 Ray Train workers on downscaled ISBI with runs on S3; the run's files and record, and the best checkpoint
reloading in a fresh process (the session's shared run, tests/conftest.py); the IoU a longer run reaches (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from unet_dist.storage import resolve
from unet_dist import checkpoint as ckpt
from unet_dist.train import fit
from unet_dist.runs import EVENTS_FILE, METRICS_FILE, PROGRESS_FILE, RunDir

ISBI_MIN_VAL_IOU = 0.85  # foreground (cell interior) IoU; predicting all-foreground scores ~0.78 on these images


@pytest.mark.ray
@pytest.mark.s3
def test_a_finished_run_on_s3_leaves_its_files_record_and_a_checkpoint_that_reloads(shared_campaign) -> None:
    """The shared 2-worker, 2-epoch run on S3: metrics, events, progress, TensorBoard and run.json agree, no secret is
    in them, and ``unet-dist evaluate`` of the best checkpoint in a fresh process reproduces its validation epoch."""
    run = resolve(f"{shared_campaign['s3']}/{shared_campaign['run']}")
    record = RunDir(run).read_record()
    check_finished_run(run, record, shared_campaign["dataset"], epochs=2)


@pytest.mark.ray
@pytest.mark.s3
def test_fit_hands_every_report_to_callbacks_and_every_epoch_to_recorders(shared_campaign) -> None:
    """The training seam: the shared run's ``fit(callbacks=[ReportLog], recorders=[EpochLog])`` (tests/conftest.py).
    The controller callback saw each epoch's report with its checkpoint; the recorder ran on both ranks, every
    epoch, before every step, with rank 0 alone holding the training state; both agree with metrics.jsonl."""
    run = resolve(f"{shared_campaign['s3']}/{shared_campaign['run']}")
    rows = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    seam = shared_campaign["seam"]
    reports = [json.loads(line) for line in (seam / "reports.jsonl").read_text().splitlines()]
    assert reports == [{"epoch": r["epoch"], "val_iou": r["val_iou"], "checkpoint": True} for r in rows]
    for rank in (0, 1):
        seen = [json.loads(line) for line in (seam / f"rank-{rank}.jsonl").read_text().splitlines()]
        assert [(e["epoch"], e["val_iou"]) for e in seen] == [(r["epoch"], r["val_iou"]) for r in rows]
        assert 0 < seen[0]["steps"] < seen[1]["steps"]
        assert ("model" in seen[0]["state"]) == (rank == 0) and ("optimizer" in seen[0]["state"]) == (rank == 0)


def check_finished_run(run, record: dict, dataset: str, epochs: int) -> None:
    """What every finished run leaves: files, record and a best checkpoint that reloads to the same validation."""
    rows = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(epochs))
    for r in rows:
        assert r["world_size"] == 2 and r["val_images"] > 0 and r["images_per_s"] > 0
        assert set(r["val_per_class_iou"]) == {"background", "foreground"}
    events = [json.loads(line) for line in (run / EVENTS_FILE).read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == list(range(epochs))
    assert any(c.name.startswith("events.out.tfevents") for c in (run / "tensorboard").ls())
    progress = json.loads((run / PROGRESS_FILE).read_text())
    assert progress["phase"] == "epoch_end" and progress["epoch"] == epochs - 1
    assert progress["loss"] == rows[-1]["train_loss"] and progress["val_iou"] == rows[-1]["val_iou"]

    assert record["status"] == "finished" and record["error"] is None and record["ended_at"]
    assert record["epochs"] == epochs and record["epochs_planned"] == epochs and record["code_version"]
    assert record["dataset"]["uri"] == dataset and len(record["dataset"]["fingerprint"]) == 64
    assert record["monitor"] == {"metric": "val_image_mean_iou", "mode": "max"}
    best_epoch = record["best_epoch"]
    assert record["best_checkpoint"].startswith(run.uri) and record["best"]["value"] == rows[best_epoch]["val_image_mean_iou"]
    assert record["final_metrics"]["epoch"] == epochs - 1 and "resources.use_gpu=false" in record["gpu_reason"]
    assert "unetdist-test-secret" not in (run / "run.json").read_text()

    state = ckpt.load_checkpoint(record["best_checkpoint"])
    assert state["epoch"] == best_epoch and state["fingerprint"]
    assert "secret" not in json.dumps(state["config"]) and "unetdist-test-secret" not in json.dumps(state["config"])

    proc = subprocess.run([sys.executable, "-m", "unet_dist", "evaluate", record["best_checkpoint"], "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    best_row = rows[best_epoch]
    assert fresh["confusion_matrix"] == best_row["val_confusion_matrix"]
    assert fresh["iou"] == pytest.approx(record["best_val_iou"], abs=1e-6)
    assert fresh["loss"] == pytest.approx(best_row["val_loss"], rel=1e-4)


@pytest.mark.slow  # ~40 s: the quality bar; a finished run's files and reload are checked on the shared run above
@pytest.mark.ray
@pytest.mark.s3
def test_two_workers_isbi_on_s3_reaches_iou(small_config, ray_local, s3_uri, isbi_small_dir) -> None:
    from unet_dist.data.ingest import ingest
    from unet_dist.config import IngestConfig

    dataset = f"{s3_uri}/isbi128"
    ingest(str(isbi_small_dir), dataset, IngestConfig(split=(0.67, 0.33, 0.0), seed=0), progress=False)
    cfg = small_config(dataset, f"{s3_uri}/runs", "model.base_filters=16", "data.crop_size=128",
                       "data.num_crops_per_image=4", "train.epochs=12", "train.lr=0.003", "train.name=isbi")
    summary = fit(cfg, progress=False)
    print("isbi summary:", summary.to_json())

    assert summary.run_dir == f"{s3_uri}/runs/isbi" and summary.epochs == 12
    assert summary.best_val_iou >= ISBI_MIN_VAL_IOU, summary.to_json()
    run = resolve(summary.run_dir)
    record = RunDir(run).read_record()
    assert record["best_checkpoint"] == summary.best_checkpoint and record["best_epoch"] == summary.best_epoch
    assert record["best"]["value"] == summary.best_metric
    check_finished_run(run, record, dataset, epochs=12)
