"""The Ray Data pipeline: seeded augmentation, whole-image validation, 2 TorchTrainer workers on 2 CPUs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from unet_dist.config import DataConfig
from unet_dist.data import read_manifest
from unet_dist.data.pipeline import (
    IGNORE_INDEX, PipelineSpec, _my_rows, build_datasets, dataset_config, iter_train_batches, iter_val_batches, pipeline_spec,
)
from unet_dist.data.synthetic import demo_dataset

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """25 synthetic 40-px images: 20 train (even, so the equal split over 2 workers drops none), 3 val, 2 test."""
    return demo_dataset(str(tmp_path_factory.mktemp("pipe")), n=25, size=40, mode="multiclass")


@pytest.fixture
def datasets(ray_local, dataset) -> dict:
    """The train/val Ray Datasets, built (read + materialised) on the test's Ray."""
    return build_datasets(_cfg(dataset), None, 1, read_manifest(dataset))


def _cfg(dataset: str, **kw) -> DataConfig:
    return DataConfig(dataset=dataset, crop_size=kw.pop("crop_size", 48), batch_size=4, **kw)


def test_small_splits_read_by_the_driver_equal_ray_datas_read(datasets, dataset, monkeypatch):
    """A split under DRIVER_READ_MAX_BYTES skips Ray Data's read tasks; the rows and blocks are what the read makes."""
    from unet_dist.data import pipeline

    monkeypatch.setattr(pipeline, "DRIVER_READ_MAX_BYTES", 0)
    read = build_datasets(_cfg(dataset), None, 1, read_manifest(dataset))
    for split in ("train", "val"):
        assert datasets[split].num_blocks() == read[split].num_blocks() == len(read_manifest(dataset)["splits"][split]["files"])
        assert datasets[split].take_all() == read[split].take_all()
        assert "ReadFiles" in read[split].stats() and "ReadFiles" not in datasets[split].stats()


def test_train_batches_seeded_per_epoch(datasets, dataset):
    cfg = _cfg(dataset)
    spec = pipeline_spec(cfg, None, 3, read_manifest(dataset))
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
    spec = pipeline_spec(cfg, None, 1, read_manifest(dataset), pad_multiple=16)
    val = datasets["val"]
    n = read_manifest(dataset)["counts"]["val"]
    whole = list(iter_val_batches(val.iterator(), 2, spec, rank=0, world_size=1))
    assert sum(b["image"].shape[0] for b in whole) == n
    assert all(b["image"].shape[-2:] == (48, 48) for b in whole), "40 px padded up to a multiple of 16"
    assert sum(int((b["mask"] != IGNORE_INDEX).sum()) for b in whole) == n * 40 * 40
    parts = [list(iter_val_batches(val.iterator(), 1, spec, rank=r, world_size=2)) for r in range(2)]
    assert sum(int((b["mask"] != IGNORE_INDEX).sum()) for p in parts for b in p) == n * 40 * 40


def test_torch_trainer_two_workers_on_two_cpus(datasets, dataset, tmp_path):
    """Both ways "train" reaches 2 workers, in one run: Ray Data's split ("train") and each worker keeping its share
    of the whole small split ("whole", the same dataset unsplit): every row exactly once per epoch, disjoint equal
    shares; every val pixel once."""
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from unet_dist.data.pipeline import needs_split

    modes = ("train", "whole")

    def count_loop(config: dict) -> None:
        """Counts rows/pixels per epoch and mode; defined here so Ray pickles it by value."""
        import ray.train
        import torch.distributed as dist

        spec = config["spec"]
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        val = ray.train.get_dataset_shard("val")
        for epoch in range(2):
            for mode in modes:
                train = ray.train.get_dataset_shard(mode)
                seen = torch.zeros(3, dtype=torch.int64)
                ids = [str(rows[0]) for rows in _my_rows(train, 4, epoch, spec, rank, world)]
                for batch in iter_train_batches(train, 4, epoch_seed=epoch, spec=spec, rank=rank, world_size=world):
                    seen[0] += batch["image"].shape[0]
                    seen[1] += 1
                for batch in iter_val_batches(val, 2, spec):
                    seen[2] += int((batch["mask"] != IGNORE_INDEX).sum())
                batches = int(seen[1])
                dist.all_reduce(seen)
                (Path(config["out"]) / f"ids-{mode}-{epoch}-{rank}.json").write_text(json.dumps(ids))
                if rank == 0:
                    out = Path(config["out"]) / f"{mode}-{epoch}.json"
                    out.write_text(json.dumps({"train_rows": int(seen[0]), "batches": int(seen[1]),
                                               "val_pixels": int(seen[2]), "rank0_batches": batches}))
            ray.train.report({"epoch": epoch})

    cfg = _cfg(dataset)
    manifest = read_manifest(dataset)
    assert not needs_split(datasets["train"])  # small and materialised: the default is the whole split
    assert dataset_config(True)._datasets_to_split == ["train"] and dataset_config(False)._datasets_to_split == []
    spec = replace(pipeline_spec(cfg, None, 1, manifest), train_rows=manifest["counts"]["train"])
    trainer = TorchTrainer(
        count_loop,
        train_loop_config={"spec": spec, "out": str(tmp_path)},
        datasets={**datasets, "whole": datasets["train"]},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="count", storage_path=str(tmp_path / "runs")),
    )
    result = trainer.fit()
    assert result.error is None
    for mode in modes:
        for epoch in range(2):
            seen = json.loads((tmp_path / f"{mode}-{epoch}.json").read_text())
            assert seen["train_rows"] == manifest["counts"]["train"], f"{mode}: every train row once per epoch across the 2 workers"
            assert seen["batches"] == 2 * seen["rank0_batches"], "equal batch counts keep DDP in step"
            assert seen["val_pixels"] == manifest["splits"]["val"]["pixels"], "every val pixel exactly once, no padding"
            shares = [json.loads((tmp_path / f"ids-{mode}-{epoch}-{r}.json").read_text()) for r in range(2)]
            assert len(shares[0]) == len(shares[1]) == manifest["counts"]["train"] // 2
            assert not set(shares[0]) & set(shares[1]), f"{mode}: the workers' shares are disjoint"


SIZES = [(20, 27), (33, 18), (27, 20), (45, 31), (20, 27), (33, 18), (19, 19), (45, 31), (27, 20), (20, 27), (33, 18), (50, 41)]


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory) -> str:
    """12 images of 6 sizes, none a multiple of 16, nearly all in val."""
    import numpy as np

    from unet_dist.config import IngestConfig
    from unet_dist.data import ingest
    from unet_dist.data.codec import encode_png
    from unet_dist.data.synthetic import sample

    root = tmp_path_factory.mktemp("mixed")
    (root / "raw" / "images").mkdir(parents=True)
    (root / "raw" / "masks").mkdir()
    for i, (h, w) in enumerate(SIZES):
        image, mask = sample(np.random.default_rng(i), 64)
        (root / "raw" / "images" / f"m{i:02d}.png").write_bytes(encode_png(image[:h, :w]))
        (root / "raw" / "masks" / f"m{i:02d}.png").write_bytes(encode_png(mask[:h, :w]))
    ingest(str(root / "raw"), str(root / "ds"), IngestConfig(split=(0.1, 0.9, 0.0)), progress=False)
    return str(root / "ds")


def _conv_model() -> torch.nn.Module:
    """A deterministic down/up-sampling conv net whose border outputs depend on how far the padding reaches."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Upsample(scale_factor=2),
        torch.nn.Conv2d(4, 2, 3, padding=1),
    ).eval()


def _predictions(batches, model) -> dict[bytes, torch.Tensor]:
    """Each image's logits over its real pixels, keyed by its pixels; checks every image has its own padded shape."""
    from unet_dist.data.pipeline import padded_shape

    out: dict[bytes, torch.Tensor] = {}
    for batch in batches:
        with torch.no_grad():
            logits = model(batch["image"])
        for x, y, z in zip(batch["image"], batch["mask"], logits):
            valid = y != IGNORE_INDEX
            h, w = int(valid.any(1).sum()), int(valid.any(0).sum())
            assert tuple(y.shape) == padded_shape(h, w, 16), "padded only to its own size"
            out[x[:, :h, :w].numpy().tobytes()] = z[:, :h, :w]
    return out


def test_val_predictions_independent_of_batch_size_and_workers(ray_local, mixed_dataset):
    from unet_dist.data.pipeline import collate_whole, decode_row

    manifest = read_manifest(mixed_dataset)
    cfg = DataConfig(dataset=mixed_dataset, crop_size=32)
    spec = pipeline_spec(cfg, None, 1, manifest, pad_multiple=16)
    val = build_datasets(cfg, None, 1, manifest, splits=("val",))["val"]
    model = _conv_model()
    single = _predictions(iter_val_batches(val.iterator(), 1, spec, 0, 1), model)
    triple = _predictions(iter_val_batches(val.iterator(), 3, spec, 0, 1), model)
    ranks = [_predictions(iter_val_batches(val.iterator(), 3, spec, r, 2), model) for r in range(2)]
    assert len(single) == manifest["counts"]["val"] >= 8
    assert not set(ranks[0]) & set(ranks[1]), "each val image on exactly one rank"
    assert sum(v.shape[-2] * v.shape[-1] for v in single.values()) == manifest["splits"]["val"]["pixels"]
    for other in (triple, {**ranks[0], **ranks[1]}):
        assert set(other) == set(single)
        for key, logits in single.items():
            torch.testing.assert_close(other[key], logits, rtol=1e-5, atol=1e-6)
            assert torch.equal(other[key].argmax(0), logits.argmax(0))
    rows = sorted(_val_rows(manifest), key=lambda r: r["height"] * r["width"])
    small, large = (decode_row(r["image"], r["mask"], spec) for r in (rows[0], rows[-1]))
    h, w = small[1].shape
    with torch.no_grad():
        alone = model(collate_whole([small], 16)["image"])[0, :, :h, :w]
        padded_to_large = model(collate_whole([small, large], 16)["image"])[0, :, :h, :w]
    assert not torch.allclose(alone, padded_to_large), "the test model must be sensitive to how far padding reaches"


def _val_rows(manifest: dict) -> list[dict]:
    import pyarrow.parquet as pq

    from unet_dist.data import split_paths

    paths, fs = split_paths(manifest, "val")
    return [r for p in paths for r in pq.read_table(p, filesystem=fs).to_pylist()]


@pytest.mark.parametrize("setting,crop,expected", [("auto", 256, 4), ("auto", 128, 16), ("auto", 1024, 1), (3, 256, 3)])
def test_crops_per_image_auto_covers_the_mean_image_area(setting, crop: int, expected: int) -> None:
    from unet_dist.data.pipeline import crops_per_image

    manifest = {"splits": {"train": {"count": 24, "pixels": 24 * 512 * 512}}}
    assert crops_per_image(DataConfig(num_crops_per_image=setting, crop_size=crop), manifest, crop) == expected


@pytest.mark.parametrize("median,batch,depth,expected", [
    ([256, 320], 4, 4, 256),   # the median image, whole
    ([128, 128], 4, 4, 128),   # small images: crops no larger than them (256² crops would be mostly padding)
    ([1040, 1392], 4, 5, 256),  # large images: capped at 4 x 256² pixels a batch
    ([1040, 1392], 16, 4, 128),  # ... which a larger batch shares
    ([100, 90], 2, 3, 80),     # rounded down to a multiple of 16 (and of 2**depth)
    ([20, 20], 2, 5, 32),      # never below one 2**depth step
])
def test_auto_crop_is_the_median_image_capped_by_batch_pixels(median, batch, depth, expected) -> None:
    from unet_dist.data.pipeline import crop_size, pipeline_spec

    manifest = {"image_size": {"median_hw": median}, "splits": {"train": {"count": 2, "pixels": 2 * median[0] * median[1]}},
                "image_stats": {"mean": [0.5], "std": [0.2]}, "num_classes": 2}
    cfg = DataConfig(crop_size="auto", batch_size=batch, num_crops_per_image="auto")
    assert crop_size(cfg, manifest, 2**depth) == expected
    spec = pipeline_spec(cfg, None, 1, manifest, pad_multiple=2**depth)
    assert spec.crop_size == expected and spec.num_crops_per_image == max(1, round(median[0] * median[1] / expected**2))
    assert crop_size(DataConfig(crop_size=96), manifest, 2**depth) == 96


def test_auto_crop_plans_from_an_ingested_sets_median(tmp_path) -> None:
    from unet_dist.data.pipeline import crop_size

    dataset = demo_dataset(str(tmp_path), n=6, size=72)
    manifest = read_manifest(dataset)
    assert manifest["image_size"]["median_hw"] == [72, 72]
    assert crop_size(DataConfig(crop_size="auto"), manifest, 8) == 64


@pytest.mark.parametrize("fraction", [0.0, 0.33, 1.0])
def test_foreground_oversampling_centres_the_asked_fraction_of_crops(fraction: float) -> None:
    """A 2 x 2 object in a 128 x 128 image, 32 px crops, 1,000 draws: the share of crops centred on it is the asked
    fraction within 5 points (a uniform crop centres on it once in ~2,400 draws); an object at the border stays in
    the crop; an image without foreground still gets uniform crops."""
    from unet_dist.data.pipeline import augment, crop_seed

    spec = PipelineSpec(in_channels=1, num_classes=2, mean=(0.0,), std=(1.0,), crop_size=32, hflip=False, vflip=False,
                        rot90=False, intensity_jitter=0.0, foreground_oversample=fraction)
    image, mask = torch.zeros(1, 128, 128), torch.zeros(128, 128, dtype=torch.int64)
    mask[70:72, 40:42] = 1
    centred = 0
    for k in range(1000):
        _, crop = augment(image, mask, spec, torch.Generator().manual_seed(crop_seed(0, "img", k)))
        centred += int(crop[16, 16] == 1)
    assert abs(centred / 1000 - fraction) <= 0.05, centred
    corner = torch.zeros(128, 128, dtype=torch.int64)
    corner[0, 127] = 1
    border = replace(spec, foreground_oversample=1.0)
    assert all(int(augment(image, corner, border, torch.Generator().manual_seed(k))[1].sum()) == 1 for k in range(20))
    empty = [augment(image, torch.zeros_like(mask), border, torch.Generator().manual_seed(k))[1].shape for k in range(5)]
    assert empty == [(32, 32)] * 5


def test_no_oversampling_leaves_every_crop_as_it_was() -> None:
    """foreground_oversample=0 draws nothing extra from the generator: the crops (and so every seeded run) are the
    ones a spec without the option gives."""
    from unet_dist.data.pipeline import _randint, augment

    spec = PipelineSpec(in_channels=1, num_classes=2, mean=(0.0,), std=(1.0,), crop_size=16, intensity_jitter=0.0)
    image = torch.arange(64 * 48, dtype=torch.float32).reshape(1, 64, 48)
    mask = (image[0] % 7 == 0).long()
    for k in range(10):
        g = torch.Generator().manual_seed(k)
        top, left = _randint(g, 64 - 16), _randint(g, 48 - 16)  # what augment drew before the option existed
        x, _ = augment(image, mask, replace(spec, hflip=False, vflip=False, rot90=False), torch.Generator().manual_seed(k))
        assert torch.equal(x, image[:, top:top + 16, left:left + 16])
