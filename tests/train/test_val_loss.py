"""val_loss is exact: the same for any validation batch size and worker count (per-image losses weighted by their valid
pixels, padding excluded, summed in float64 and all-reduced), measured with real Ray Train runs of one model."""

from __future__ import annotations

import pytest

from unet_dist.config import IngestConfig, load_config
from unet_dist.runs import RunDir
from unet_dist.storage import resolve

from datagen import write_csv, write_pairs

VAL_SIZES = [64, 60, 64, 58, 62, 64]  # three padded shapes (pad_multiple 8), two images each of different valid sizes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    from unet_dist.data.ingest import ingest

    root = tmp_path_factory.mktemp("valloss")
    raw = root / "raw"
    train = write_pairs(raw, [64, 64, 64, 64], prefix="tr")
    val = write_pairs(raw, VAL_SIZES, seed=1, prefix="va")
    csv = write_csv(raw / "all.csv", [(f"images/{n}", f"masks/{n}", "train") for n in train]
                    + [(f"images/{n}", f"masks/{n}", "val") for n in val])
    ingest(str(csv), str(root / "data"), IngestConfig(split_column="split"), progress=False)
    return str(root / "data")


def _val_loss(dataset: str, storage: str, workers: int, val_batch_size: int) -> tuple[dict, str]:
    """One epoch that trains no step (a time budget spent before the first), so every run validates the same
    initial model (seeded): its metrics row and checkpoint."""
    from unet_dist.train import fit

    name = f"vl-w{workers}-b{val_batch_size}"
    cfg = load_config(None, [f"data.dataset={dataset}", f"storage.uri={storage}", "model.base_filters=8", "model.depth=3",
                             "data.crop_size=32", "data.batch_size=2", f"data.val_batch_size={val_batch_size}",
                             f"resources.num_workers={workers}", "resources.cpus_per_worker=0.5",
                             "resources.torch_threads=1", "resources.use_gpu=false", "train.epochs=1",
                             "train.time_budget_s=0.000001", "train.log_images=0", "train.loss=dice_ce",
                             f"train.name={name}"])
    summary = fit(cfg, progress=False)
    row = RunDir(resolve(storage) / name).metrics()[0]
    assert row["val_images"] == len(VAL_SIZES) and row["train_images"] == 0, row
    return row, summary.last_checkpoint


@pytest.mark.ray
def test_val_loss_is_the_same_for_any_val_batch_size_and_worker_count(dataset: str, tmp_path, ray_local) -> None:
    from unet_dist.inference.evaluate import evaluate

    # two workers with batches of 3 (3 and 3 images, other padded shapes on each) against one process (unet-dist
    # evaluate shares validate()) at every batch size, on the same checkpoint
    # (and the per-image scores of the mixed-size val images, all-reduced the same way)
    row, checkpoint = _val_loss(dataset, str(tmp_path / "runs"), workers=2, val_batch_size=3)
    for batch_size in (1, 2, 3):
        out = evaluate(checkpoint, split="val", batch_size=batch_size)
        assert out["loss"] == pytest.approx(row["val_loss"], rel=1e-6, abs=1e-9)
        for key in ("image_iou", "image_mean_iou", "image_dice", "image_mean_dice"):
            assert out[key] == pytest.approx(row[f"val_{key}"], abs=1e-9), key


def test_val_loss_weights_each_image_by_its_valid_pixels_and_skips_padding() -> None:
    """validate() on hand-made batches: the loss of each image alone, weighted by its pixels with target >= 0."""
    import torch

    from unet_dist.losses import create_loss
    from unet_dist.inference.validate import validate

    cfg = load_config(None, ["model.num_classes=2"])
    loss_fn = create_loss("dice_ce", 2)
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(1, 8, 8, generator=g) for _ in range(3)]
    masks = [torch.randint(0, 2, (8, 8), generator=g) for _ in range(3)]
    masks[1][:, 5:] = -1  # padding / ignored pixels
    masks[2][:] = -1  # an image with no valid pixel adds nothing

    class Model(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, -x * 0.5], dim=1)

    model = Model()
    expected_sum, pixels = 0.0, 0
    for x, y in zip(images, masks):
        valid = int((y >= 0).sum())
        if valid:
            expected_sum += float(loss_fn(model(x[None]), y[None])) * valid
            pixels += valid

    def batches(size: int):
        for i in range(0, 3, size):
            yield {"image": torch.stack(images[i:i + size]), "mask": torch.stack(masks[i:i + size])}

    for size in (1, 2, 3):
        out, _ = validate(model, batches(size), loss_fn, cfg, torch.device("cpu"), None)
        assert out["loss"] == pytest.approx(expected_sum / pixels, rel=1e-12) and out["images"] == 3
