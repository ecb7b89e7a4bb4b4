"""The Ray Data pipeline: seeded augmentation, whole-image validation, 2 TorchTrainer workers on 2 CPUs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unet_dist.config import DataConfig
from unet_dist.data import read_manifest
from unet_dist.data.pipeline import (
    IGNORE_INDEX, build_datasets, dataset_config, iter_train_batches, iter_val_batches, pipeline_spec,
)
from unet_dist.data.synthetic import demo_dataset

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """24 synthetic 40-px images: 20 train (even, so the equal split over 2 workers drops none), 2 val, 2 test."""
    return demo_dataset(str(tmp_path_factory.mktemp("pipe")), n=24, size=40, mode="multiclass")


@pytest.fixture
def datasets(ray_local, dataset) -> dict:
    """The train/val Ray Datasets, built (read + materialised) on the test's Ray."""
    return build_datasets(_cfg(dataset), None, in_channels=1)


def _cfg(dataset: str, **kw) -> DataConfig:
    return DataConfig(dataset=dataset, crop_size=kw.pop("crop_size", 48), batch_size=4, **kw)


def test_train_batches_seeded_per_epoch(datasets, dataset):
    cfg = _cfg(dataset)
    spec = pipeline_spec(cfg, None, in_channels=3)
    train = datasets["train"]
    run = lambda seed: list(iter_train_batches(train.iterator(), cfg.batch_size, seed, spec))  # noqa: E731
    a, b, c = run(1), run(1), run(2)
    n = read_manifest(dataset)["counts"]["train"]
    sizes = [4] * (n // 4) + ([n % 4] if n % 4 else [])
    assert [tuple(x["image"].shape) for x in a] == [(k, 3, 48, 48) for k in sizes]
    assert all(x["mask"].dtype == torch.int64 and x["image"].dtype == torch.float32 for x in a)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["image"], y["image"])
        assert torch.equal(x["mask"], y["mask"])
    assert not torch.equal(torch.cat([x["mask"] for x in a]), torch.cat([x["mask"] for x in c]))
    masks = torch.cat([x["mask"] for x in a])
    real = (masks != IGNORE_INDEX).sum(dim=(1, 2))
    assert torch.all(real == 40 * 40), "a 40-px image padded to a 48 crop keeps all its pixels, the rest is ignore"
    assert set(masks.unique().tolist()) <= {IGNORE_INDEX, 0, 1, 2}


def test_val_batches_whole_images_split_by_rank(datasets, dataset):
    cfg = _cfg(dataset, val_batch_size=2)
    spec = pipeline_spec(cfg, None, in_channels=1, pad_multiple=16)
    val = datasets["val"]
    n = read_manifest(dataset)["counts"]["val"]
    whole = list(iter_val_batches(val.iterator(), 2, spec, rank=0, world_size=1))
    assert sum(b["image"].shape[0] for b in whole) == n
    assert all(b["image"].shape[-2:] == (48, 48) for b in whole), "40 px padded up to a multiple of 16"
    assert sum(int((b["mask"] != IGNORE_INDEX).sum()) for b in whole) == n * 40 * 40
    parts = [list(iter_val_batches(val.iterator(), 1, spec, rank=r, world_size=2)) for r in range(2)]
    assert sum(int((b["mask"] != IGNORE_INDEX).sum()) for p in parts for b in p) == n * 40 * 40


def test_torch_trainer_two_workers_on_two_cpus(datasets, dataset, tmp_path):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def count_loop(config: dict) -> None:
        """Counts rows/pixels per epoch; defined here so Ray pickles it by value."""
        import ray.train
        import torch.distributed as dist

        spec = config["spec"]
        train, val = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
        for epoch in range(2):
            seen = torch.zeros(3, dtype=torch.int64)
            for batch in iter_train_batches(train, 4, epoch_seed=epoch, spec=spec):
                seen[0] += batch["image"].shape[0]
                seen[1] += 1
            for batch in iter_val_batches(val, 2, spec):
                seen[2] += int((batch["mask"] != IGNORE_INDEX).sum())
            batches = int(seen[1])
            dist.all_reduce(seen)
            if ray.train.get_context().get_world_rank() == 0:
                out = Path(config["out"]) / f"epoch-{epoch}.json"
                out.write_text(json.dumps({"train_rows": int(seen[0]), "batches": int(seen[1]), "val_pixels": int(seen[2]),
                                           "rank0_batches": batches}))
            ray.train.report({"epoch": epoch})

    cfg = _cfg(dataset)
    manifest = read_manifest(dataset)
    trainer = TorchTrainer(
        count_loop,
        train_loop_config={"spec": pipeline_spec(cfg, None, in_channels=1), "out": str(tmp_path)},
        datasets=datasets,
        dataset_config=dataset_config(),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="count", storage_path=str(tmp_path / "runs")),
    )
    result = trainer.fit()
    assert result.error is None
    for epoch in range(2):
        seen = json.loads((tmp_path / f"epoch-{epoch}.json").read_text())
        assert seen["train_rows"] == manifest["counts"]["train"], "every train row once per epoch across the 2 workers"
        assert seen["batches"] == 2 * seen["rank0_batches"], "equal batch counts keep DDP in step"
        assert seen["val_pixels"] == manifest["splits"]["val"]["pixels"], "every val pixel exactly once, no padding"
