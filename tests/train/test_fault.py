"""Starting from a checkpoint URI (weights only). A worker that dies mid-epoch, the run resuming from its newest
complete checkpoint with the same metrics and weights as an uninterrupted run, is tested with validation rounds in
test_cadence.py (a crash mid-pass and mid-round: the general case of the loop's resume)."""

from __future__ import annotations

import json

import pytest

from unet_dist.storage import resolve
from unet_dist.train import fit
from unet_dist.runs import EVENTS_FILE, METRICS_FILE



def _rows(run_uri: str, name: str) -> list[dict]:
    return [json.loads(line) for line in resolve(run_uri).join(name).read_text().splitlines()]


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
