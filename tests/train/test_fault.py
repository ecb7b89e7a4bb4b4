"""A worker dies mid-epoch: the run resumes from the newest complete checkpoint, trains no reported epoch twice,
and ends with the same metrics as an uninterrupted run with the same seed."""

from __future__ import annotations

import json

import pytest

from unet_dist.storage import resolve
from unet_dist.train import fit
from unet_dist.runs import EVENTS_FILE, METRICS_FILE
from unet_dist.train.fault import FAULT_ENV

EPOCHS = 4
COMPARED = ("train_loss", "train_iou", "val_loss", "val_iou", "val_mean_iou", "val_dice", "val_pixel_acc", "lr")


def _rows(run_uri: str, name: str) -> list[dict]:
    return [json.loads(line) for line in resolve(run_uri).join(name).read_text().splitlines()]


@pytest.mark.ray
def test_worker_crash_resumes_without_retraining(small_config, ray_local, synthetic_dataset, tmp_path, monkeypatch) -> None:
    base = ("data.crop_size=64", f"train.epochs={EPOCHS}", "train.seed=7", "train.max_failures=2")
    reference = fit(small_config(synthetic_dataset, str(tmp_path), *base, "train.name=reference"), progress=False)

    monkeypatch.setenv(FAULT_ENV, "rank=1,epoch=2,step=1")
    crashed = fit(small_config(synthetic_dataset, str(tmp_path), *base, "train.name=crashed"), progress=False)

    run = resolve(crashed.run_dir)
    assert any(c.name.startswith(".fault-r1-e2") for c in run.ls()), "the fault hook did not fire"
    events = _rows(crashed.run_dir, EVENTS_FILE)
    trained = [e["epoch"] for e in events if e["event"] == "epoch_end"]
    assert trained == list(range(EPOCHS)), events  # each epoch completed exactly once, in order
    starts = [e for e in events if e["event"] == "start"]
    assert [s["start_epoch"] for s in starts] == [0, 2], starts  # restarted after epoch 1's checkpoint
    assert starts[1]["resumed_from"].endswith("epoch_0001") and starts[1]["full_state"]
    assert [r["epoch"] for r in _rows(crashed.run_dir, METRICS_FILE)] == list(range(EPOCHS))

    ref_rows = _rows(reference.run_dir, METRICS_FILE)
    got_rows = _rows(crashed.run_dir, METRICS_FILE)
    for ref, got in zip(ref_rows, got_rows):
        for key in COMPARED:
            assert got[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-6), (ref["epoch"], key)
        assert got["val_confusion_matrix"] == ref["val_confusion_matrix"]
    assert crashed.best_val_iou == pytest.approx(reference.best_val_iou, abs=1e-6)


@pytest.mark.ray
@pytest.mark.slow  # ~80 s; the weights-only path is also preflighted in the default suite (check_resume_from)
def test_resume_from_checkpoint_uri_starts_from_its_weights(small_config, ray_local, synthetic_dataset, tmp_path) -> None:
    common = ("data.crop_size=64", "resources.num_workers=1", "train.warmup_epochs=0")
    first = fit(small_config(synthetic_dataset, str(tmp_path), *common, "train.epochs=3", "train.name=first"), progress=False)
    second = fit(small_config(synthetic_dataset, str(tmp_path), *common, "train.epochs=1", "train.name=second",
                              f"train.resume_from={first.last_checkpoint}"), progress=False)
    start = _rows(second.run_dir, EVENTS_FILE)[0]
    assert start["event"] == "start" and start["resumed_from"] == first.last_checkpoint
    assert start["start_epoch"] == 0 and not start["full_state"]
    assert _rows(second.run_dir, METRICS_FILE)[0]["train_loss"] < _rows(first.run_dir, METRICS_FILE)[0]["train_loss"]
