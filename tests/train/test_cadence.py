"""Validation cadence (``train.val_every_steps`` / ``train.val_every_s``): a pass over the training data is cut into
validation rounds, each one reported epoch with its metrics row and checkpoint; a worker killed mid-round resumes
from the newest complete checkpoint at its place in the pass, trains no reported epoch twice and ends with the same
metrics and weights as an uninterrupted run (the fault-tolerance test of the training loop)."""

from __future__ import annotations

import json

import pytest
import torch

from unet_dist import checkpoint as ckpt
from unet_dist.config import load_config
from unet_dist.runs import EVENTS_FILE, RunDir
from unet_dist.storage import resolve
from unet_dist.train import fit
from unet_dist.train.fault import FAULT_ENV
from unet_dist.train.loop import SyncedBatches, validation_due
from unet_dist.train.state import Cursor

EPOCHS = 2
EVERY = 2  # optimiser steps per round: 5 steps a pass (10 crops per worker, batch 2) -> rounds of 2, 2, 1
COMPARED = ("train_loss", "train_iou", "val_loss", "val_iou", "val_image_iou", "lr", "epochs_done")


def test_auto_interval_is_a_tenth_of_the_budget() -> None:
    assert load_config(None, ["train.time_budget_s=60"]).train.validation_interval_s() == 6.0
    assert load_config(None, []).train.validation_interval_s() is None  # unbudgeted: once per pass
    assert load_config(None, ["train.time_budget_s=60", "train.val_every_s=null"]).train.validation_interval_s() is None
    assert load_config(None, ["train.val_every_s=2.5"]).train.validation_interval_s() == 2.5


def test_due_round_leaves_the_next_batch_in_the_pass() -> None:
    steps = [0]
    due = validation_due(load_config(None, [f"train.val_every_steps={EVERY}"]).train, lambda: steps[0], lambda: 0.0)
    it = iter(range(5))
    taken: list[list[int]] = []
    while True:
        batches, got = SyncedBatches(it, distributed=False, due=due), []
        steps[0] = 0
        for b in batches:
            got.append(b)
            steps[0] += 1
        taken.append(got)
        if batches.exhausted:
            break
    assert taken == [[0, 1], [2, 3], [4]]  # nothing drawn and dropped at a round's end


def test_seconds_interval_is_due_after_its_time() -> None:
    clock = [0.0]
    due = validation_due(load_config(None, ["train.val_every_s=3"]).train, lambda: 1, lambda: clock[0])
    assert not due()
    clock[0] = 3.0
    assert due()
    assert not validation_due(load_config(None, ["train.val_every_s=3"]).train, lambda: 0, lambda: 9.0)()  # a step first


def test_cursor_counts_passes() -> None:
    c = Cursor(1, 3, per_pass=6)
    assert c.epochs_done() == 1.5
    c.next_pass()
    assert (c.pass_index, c.step, c.epochs_done()) == (2, 0, 2.0)
    assert Cursor(0, 9, per_pass=6).epochs_done() < 1  # an estimate short of the pass never reads as a finished pass


def _rows(run: RunDir) -> list[dict]:
    return run.metrics()


@pytest.mark.ray
def test_rounds_report_checkpoint_and_resume_mid_pass(small_config, ray_local, synthetic_dataset, tmp_path,
                                                      monkeypatch) -> None:
    base = ("data.crop_size=64", "data.num_crops_per_image=2", f"train.epochs={EPOCHS}", f"train.val_every_steps={EVERY}",
            "train.seed=3", "train.max_failures=2", "train.num_to_keep=10")
    reference = fit(small_config(synthetic_dataset, str(tmp_path), *base, "train.name=reference"), progress=False)
    ref = RunDir(resolve(reference.run_dir))
    rows = _rows(ref)
    steps = [r["train_images"] // (2 * 2) for r in rows]  # 2 workers x batch 2
    assert steps == [2, 2, 1] * EPOCHS, steps  # validated every 2 steps, and at each pass's end
    assert [r["epoch"] for r in rows] == list(range(len(rows)))
    assert [r["epochs_done"] for r in rows] == [0.4, 0.8, 1.0, 1.4, 1.8, 2.0]
    assert sorted(ref.checkpoints()) == list(range(len(rows)))  # a checkpoint per validation
    saved = ckpt.load_checkpoint(ref.checkpoints()[1].uri)
    assert (saved["epoch"], saved["pass"], saved["pass_step"]) == (1, 0, 4)
    record = ref.read_record()
    assert record["status"] == "finished" and record["epochs"] == len(rows) and record["epochs_done"] == EPOCHS

    monkeypatch.setenv(FAULT_ENV, "rank=1,epoch=1,step=1")  # dies mid-round 1 (pass 0's 4th step): one step lost
    crashed = fit(small_config(synthetic_dataset, str(tmp_path), *base, "train.name=crashed"), progress=False)
    run = RunDir(resolve(crashed.run_dir))
    assert any(c.name.startswith(".fault-r1-e1") for c in run.loc.ls()), "the fault hook did not fire"
    events = [json.loads(line) for line in (run.loc / EVENTS_FILE).read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch_end"] == list(range(len(rows)))  # each once, in order
    starts = [e for e in events if e["event"] == "start"]
    assert [(s["start_epoch"], s["start_pass"]) for s in starts] == [(0, 0), (1, 0)], starts  # resumed mid-pass 0
    assert starts[1]["resumed_from"].endswith("epoch_0000") and starts[1]["full_state"]
    got = _rows(run)
    assert [r["epoch"] for r in got] == [r["epoch"] for r in rows]
    for a, b in zip(rows, got):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["epoch"], key)
        assert b["val_confusion_matrix"] == a["val_confusion_matrix"]
    last_ref, last_got = (ckpt.load_checkpoint(r.checkpoints()[len(rows) - 1].uri)["model"] for r in (ref, run))
    for name, tensor in last_ref.items():  # the same weights at the end
        assert torch.allclose(last_got[name].float(), tensor.float(), rtol=1e-5, atol=1e-6), name
