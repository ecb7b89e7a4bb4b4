"""``build_trainer``: the TorchTrainer a Tune trial drives itself, with its own callbacks and shared datasets."""

from __future__ import annotations

import pytest

from unet_dist.runs import RunDir
from unet_dist.storage import resolve
from unet_dist.train.trainer import build_trainer, preflight, prepare_data


@pytest.mark.ray
def test_build_trainer_takes_callbacks_and_prepared_datasets(small_config, ray_local, synthetic_dataset, tmp_path) -> None:
    import json

    import ray.train

    seen = tmp_path / "seen.jsonl"

    class Collect(ray.train.UserCallback):
        """Runs in Ray Train's controller (like Tune's callback): leaves what it saw in a file."""

        def after_report(self, run_context, metrics, checkpoint) -> None:
            with open(seen, "a") as f:
                f.write(json.dumps(metrics[0]) + "\n")

    cfg = small_config(synthetic_dataset, str(tmp_path), "data.crop_size=64", "resources.num_workers=1", "train.epochs=2")
    data = prepare_data(cfg, preflight(cfg))
    run = resolve(tmp_path) / "trial-0001"
    result = build_trainer(cfg, run, callbacks=[Collect()], datasets=data).fit()
    assert result.error is None
    reported = [json.loads(line) for line in seen.read_text().splitlines()]
    assert [m["epoch"] for m in reported] == [0, 1] and all("val_mean_iou" in m for m in reported)
    assert list(RunDir(run).checkpoints()) == [0, 1] and [r["epoch"] for r in RunDir(run).metrics()] == [0, 1]
    assert data.datasets["train"].count() == data.train_rows  # the same materialised dataset, reusable by the next trial
