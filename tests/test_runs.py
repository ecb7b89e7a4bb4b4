"""The run directory module: JSON-lines files, checkpoint listing, the best checkpoint, the run record."""

from __future__ import annotations

import json
import math

import pytest

from unet_dist.config import load_config
from unet_dist.runs import (MARKER_FILE, METRICS_FILE, RUN_RECORD, STATE_FILE, MarkerError, RunDir, checkpoint_dir_name,
                            file_name_problem, finish_record, is_complete, marker_text, new_record, parse_marker, pick_best,
                            reported_metrics, worst_value)
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
    run.write_record(new_record(cfg, "r", run.uri, {"uri": "/data", "fingerprint": "f"}))
    assert run.read_record()["status"] == "running"
    for e in range(2):
        run.append(METRICS_FILE, {"epoch": e, "val_image_mean_iou": 0.5 + e / 10, "val_iou": 0.6, "train_loss": 1.0})
        _checkpoint(run, e)
    record = finish_record(run, "failed", "RuntimeError: boom")
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom" and record["ended_at"]
    assert record["epochs"] == 2 and record["best_epoch"] == 1 and record["best"]["metric"] == cfg.train.monitor
    assert record["final_metrics"]["val_image_mean_iou"] == pytest.approx(0.6)
    text = (run.loc / RUN_RECORD).read_text()
    assert "secret" not in text and json.loads(text)["config"]["train"]["epochs"] == 3


BAD_NAMES = ["../../x", "/etc/passwd", "sub/state.pt", "..\\x", "a\\b", "..", ".", "", "a\0b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_marker_naming_a_file_outside_its_folder_is_refused_on_read_and_write(tmp_path, name: str) -> None:
    """A COMPLETE marker may list plain file names only: is_complete treats anything else as not complete (even when
    the named file exists with the right size), and no writer produces one."""
    outside = tmp_path / "x"
    outside.write_bytes(b"secret")
    folder = resolve(tmp_path / "run" / "epoch_0000")  # "../../x" is the 6-byte file above
    (folder / STATE_FILE).write_bytes(b"state")
    raw = json.dumps({"files": {STATE_FILE: 5, name: 6}, "epoch": 0})
    (folder / MARKER_FILE).write_text(raw)
    assert file_name_problem(name) and not is_complete(folder)
    with pytest.raises(MarkerError, match="bad file name"):
        parse_marker(raw)
    with pytest.raises(MarkerError, match="bad file name"):
        marker_text({STATE_FILE: 5, name: 6}, 0)
    with pytest.raises(MarkerError, match="bad file name"):
        marker_text({STATE_FILE: 5}, 0, {name: "0" * 64})
    (folder / MARKER_FILE).write_text(marker_text({STATE_FILE: 5}, 0))
    assert is_complete(folder) and file_name_problem(STATE_FILE) is None


@pytest.mark.parametrize("mode", ["max", "min"])
def test_pick_best_never_picks_a_nan_or_infinite_epoch(tmp_path, mode: str) -> None:
    run = RunDir(resolve(tmp_path))
    values = [float("nan"), 0.4, float("inf"), 0.6, float("-inf"), float("nan")]
    for e, v in enumerate(values):
        _checkpoint(run, e)
        run.append(METRICS_FILE, {"epoch": e, "val_loss": v})
    best = run.best("val_loss", mode)
    assert best is not None and best.epoch == (3 if mode == "max" else 1)
    only_nan = [{"epoch": 0, "val_loss": float("nan")}]
    assert pick_best(only_nan, run.checkpoints(), "val_loss", mode) is None


def test_reported_metrics_put_a_non_finite_watched_metric_at_its_worst() -> None:
    row = {"epoch": 3, "val_loss": float("nan"), "val_mean_iou": float("nan"), "val_iou": float("nan"), "train_loss": 0.5,
           "val_per_class_iou": {"a": 0.1}}
    out = reported_metrics(row, [("val_loss", "min"), ("val_mean_iou", "max"), ("val_loss", "max")])
    assert out["val_loss"] == float("inf") and out["val_mean_iou"] == float("-inf")  # the first mode given wins
    assert math.isnan(out["val_iou"]) and out["train_loss"] == 0.5 and "val_per_class_iou" not in out  # others as they are
    assert math.isnan(row["val_loss"])  # the row (metrics.jsonl) keeps its true value
    fine = {"epoch": 0, "val_loss": 0.25}
    assert reported_metrics(fine, [("val_loss", "min")]) == fine
    assert worst_value("max") == -math.inf and worst_value("min") == math.inf


def test_start_record_over_an_existing_record_keeps_best_epochs_and_start(tmp_path) -> None:
    """A resume rewrites run.json at once: from that first write on it still names the best checkpoint (gc keeps it),
    the epochs done and the start time; only status, times and the config are new."""
    from unet_dist.runs import start_record

    cfg = load_config(None, ["train.epochs=2"])
    run = RunDir(resolve(tmp_path / "r"))
    first = start_record(run, new_record(cfg, "r", run.uri, {"uri": "/data"}))
    assert first["status"] == "running" and "resumed_at" not in first
    for e, value in enumerate((0.8, 0.6)):
        run.append(METRICS_FILE, {"epoch": e, "val_image_mean_iou": value, "val_iou": value, "train_time_s": 3.0 + e})
        _checkpoint(run, e)
    done = finish_record(run, "finished")
    assert done["best_epoch"] == 0 and done["epochs"] == 2

    more = load_config(None, ["train.epochs=4"])
    resumed = start_record(run, new_record(more, "r", run.uri, {"uri": "/data"}))
    assert resumed == run.read_record()
    assert resumed["status"] == "running" and resumed["ended_at"] is None and resumed["error"] is None
    for key in ("started_at", "epochs", "best", "best_epoch", "best_checkpoint", "best_val_iou", "best_metrics",
                "final_metrics", "train_time_s"):
        assert resumed[key] == done[key], key
    assert resumed["best_checkpoint"].endswith("epoch_0000") and resumed["epochs_planned"] == 4
    assert resumed["config"]["train"]["epochs"] == 4 and len(resumed["resumed_at"]) == 1
    assert len(start_record(run, new_record(more, "r", run.uri, {}))["resumed_at"]) == 2

    other = load_config(None, ["train.epochs=4", "train.monitor=val_loss", "train.monitor_mode=min"])
    switched = start_record(run, new_record(other, "r", run.uri, {}))
    assert switched["best"] is None and switched["epochs"] == 2  # another monitor: its best is found again


def test_after_a_resume_a_worse_epoch_never_replaces_the_kept_best(tmp_path) -> None:
    from unet_dist.runs import progress_fields, start_record

    cfg = load_config(None, ["train.epochs=3"])
    run = RunDir(resolve(tmp_path / "r"))
    start_record(run, new_record(cfg, "r", run.uri, {}))
    run.append(METRICS_FILE, {"epoch": 0, "val_image_mean_iou": 0.9})
    _checkpoint(run, 0)
    finish_record(run, "stopped")
    start_record(run, new_record(cfg, "r", run.uri, {}))
    for e, value in ((1, 0.2), (2, math.nan)):
        run.append(METRICS_FILE, {"epoch": e, "val_image_mean_iou": value})
        _checkpoint(run, e)
        record = run.update_record(**progress_fields(run.metrics(), run.best("val_image_mean_iou", "max")))
        assert record["best_epoch"] == 0 and record["best"]["value"] == pytest.approx(0.9) and record["epochs"] == e + 1
