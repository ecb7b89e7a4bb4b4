"""The run directory module: JSON-lines files, checkpoint listing, the best checkpoint, the run record."""

from __future__ import annotations

import json

import pytest

from unet_dist.config import load_config
from unet_dist.runs import (MARKER_FILE, METRICS_FILE, RUN_RECORD, STATE_FILE, RunDir, checkpoint_dir_name, finish_record,
                            marker_text, new_record, pick_best)
from unet_dist.storage import resolve


def _checkpoint(run: RunDir, epoch: int, complete: bool = True) -> None:
    folder = run.loc / checkpoint_dir_name(epoch)
    (folder / STATE_FILE).write_bytes(b"x" * (10 + epoch))
    if complete:
        (folder / MARKER_FILE).write_text(marker_text({STATE_FILE: 10 + epoch}, epoch))


def test_truncate_and_append(tmp_path) -> None:
    run = RunDir(resolve(tmp_path))
    for e in range(4):
        run.append(METRICS_FILE, {"epoch": e})
    run.truncate_metrics(2)
    assert [r["epoch"] for r in run.metrics()] == [0, 1]


def test_checkpoints_lists_only_complete_folders(tmp_path) -> None:
    run = RunDir(resolve(tmp_path))
    for e in (0, 1, 2):
        _checkpoint(run, e, complete=e != 1)
    (run.loc / "epoch_0003" / MARKER_FILE).write_text(marker_text({STATE_FILE: 99}, 3))  # marker without its file
    (run.loc / "notes.txt").write_text("stray")
    assert list(run.checkpoints()) == [0, 2]


@pytest.mark.parametrize("metric,mode,expected", [("val_mean_iou", "max", 1), ("val_iou", "max", 2), ("val_loss", "min", 0)])
def test_pick_best_by_monitor_among_kept_checkpoints(tmp_path, metric, mode, expected) -> None:
    run = RunDir(resolve(tmp_path))
    rows = [{"epoch": 0, "val_mean_iou": 0.5, "val_iou": 0.7, "val_loss": 0.2},
            {"epoch": 1, "val_mean_iou": 0.8, "val_iou": 0.75, "val_loss": 0.3},
            {"epoch": 2, "val_mean_iou": 0.4, "val_iou": 0.9, "val_loss": 0.4},
            {"epoch": 3, "val_mean_iou": 0.95, "val_iou": 0.95, "val_loss": 0.1}]  # epoch 3 has no checkpoint
    for e in range(3):
        _checkpoint(run, e)
    best = pick_best(rows, run.checkpoints(), metric, mode)
    assert best is not None and best.epoch == expected and best.checkpoint.endswith(checkpoint_dir_name(expected))


def test_record_lifecycle_keeps_secrets_out(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-write-me")
    cfg = load_config(None, ["train.epochs=3", "storage.secret_access_key=also-secret"])
    run = RunDir(resolve(tmp_path / "r"))
    run.write_record(new_record(cfg, "r", run.uri, {"uri": "/data", "fingerprint": "f"}, "0.1.0"))
    assert run.read_record()["status"] == "running"
    for e in range(2):
        run.append(METRICS_FILE, {"epoch": e, "val_mean_iou": 0.5 + e / 10, "val_iou": 0.6, "train_loss": 1.0})
        _checkpoint(run, e)
    record = finish_record(run, "failed", "RuntimeError: boom")
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom" and record["ended_at"]
    assert record["epochs"] == 2 and record["best_epoch"] == 1 and record["best"]["metric"] == "val_mean_iou"
    assert record["final_metrics"]["val_mean_iou"] == pytest.approx(0.6)
    text = (run.loc / RUN_RECORD).read_text()
    assert "secret" not in text and json.loads(text)["config"]["train"]["epochs"] == 3
