"""Defects a new user hit on unseen data: mixed-size overlays, the best-checkpoint metric, an empty worker shard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unet_dist.config import IngestConfig, load_config
from unet_dist.errors import DataError
from unet_dist.runs import pick_best
from unet_dist.storage import resolve
from unet_dist.train import fit
from unet_dist.inference.metrics import confusion_matrix, image_confusion, image_score_sums, image_scores, scores

from datagen import write_csv, write_pairs


def _ingest_csv(tmp_path, train_sizes: list[int], val_sizes: list[int]) -> str:
    from unet_dist.data.ingest import ingest

    raw = tmp_path / "raw"
    train = write_pairs(raw, train_sizes, prefix="tr")
    val = write_pairs(raw, val_sizes, seed=1, prefix="va")
    csv = write_csv(raw / "pairs.csv", [(f"images/{n}", f"masks/{n}", "train") for n in train]
                    + [(f"images/{n}", f"masks/{n}", "val") for n in val])
    dest = str(tmp_path / "dataset")
    ingest(str(csv), dest, IngestConfig(split_column="split"), progress=False)
    return dest


@pytest.mark.ray
def test_mixed_size_validation_trains_and_writes_every_overlay(small_config, ray_local, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    """A new user's mixed set, cropped as planned from it (data.crop_size=auto) and standardised per image
    (data.normalize=image): every overlay is written, and the checkpoint alone carries the normalisation, so
    evaluate reproduces the run's validation exactly."""
    from rich.console import Console

    from unet_dist.inference.evaluate import evaluate
    from unet_dist.inference.model import load_model
    from unet_dist.runs import RunDir

    dataset = _ingest_csv(tmp_path, [64, 72, 80, 64, 96, 56], [40, 88, 64, 104])
    cfg = small_config(dataset, str(tmp_path / "runs"), "data.crop_size=auto", "resources.num_workers=1",
                       "train.epochs=2", "train.log_images=4", "train.name=mixed", "data.normalize=image")
    console = Console(record=True, width=200)
    summary = fit(cfg, progress=False, console=console)
    assert "planned from the dataset: crop 64x64 (data.crop_size=auto)" in console.export_text()  # median side 68, 16-px steps
    assert summary.epochs == 2 and summary.best_checkpoint
    assert load_model(summary.best_checkpoint).image_stats["normalize"] == "image"
    measured = evaluate(summary.best_checkpoint, split="val", batch_size=3)
    reported = RunDir(resolve(tmp_path / "runs" / "mixed")).metrics()[measured["epoch"]]
    assert measured["confusion_matrix"] == reported["val_confusion_matrix"]
    acc = EventAccumulator(str(resolve(summary.tensorboard_dir).path), size_guidance={"images": 0}).Reload()
    tags = sorted(t for t in acc.Tags()["images"] if t.startswith("val/overlay/"))
    assert tags == [f"val/overlay/{i}" for i in range(4)]
    sizes = {(acc.Images(t)[-1].height, acc.Images(t)[-1].width) for t in tags}
    assert len(sizes) >= 3, sizes  # the overlays really differ in size
    assert all(len(acc.Images(t)) == 2 for t in tags)  # one per epoch


def test_degenerate_majority_model_is_not_kept_best(isbi_dir) -> None:
    """ISBI's class 1 (cell interior) is ~78 % of pixels: predicting it everywhere wins on class-1 IoU."""
    masks = [np.asarray(Image.open(p)) // 255 for p in sorted((isbi_dir / "masks").glob("*.png"))[:4]]
    target = torch.from_numpy(np.stack(masks)).long()
    rng = np.random.default_rng(0)
    noisy = target.clone()
    flip = torch.from_numpy(rng.random(target.shape) < 0.2)
    noisy[flip] = 1 - noisy[flip]

    def row(epoch: int, pred: torch.Tensor) -> dict:
        s = scores(confusion_matrix(pred, target, 2), ["membrane", "cell"])
        per_image = image_scores(image_score_sums(image_confusion(pred, target, 2)))
        return {"epoch": epoch, "val_iou": s["iou"], "val_mean_iou": s["mean_iou"],
                "val_image_mean_iou": per_image["image_mean_iou"]}

    rows = [row(0, torch.ones_like(target)), row(1, noisy)]
    assert rows[0]["val_iou"] > rows[1]["val_iou"]  # the degenerate model wins on class 1 alone ...
    cfg = load_config(None, [])
    checkpoints = {0: resolve("/ckpt/epoch_0000"), 1: resolve("/ckpt/epoch_0001")}
    best = pick_best(rows, checkpoints, cfg.train.monitor, cfg.train.monitor_mode)
    assert cfg.train.monitor == "val_image_mean_iou" and best.epoch == 1  # ... but not on the default monitor
    assert pick_best(rows, checkpoints, "val_mean_iou", "max").epoch == 1  # nor on the earlier, pooled one


@pytest.mark.ray
def test_a_train_split_too_small_for_the_workers_is_refused(small_config, ray_local, tmp_path) -> None:
    dataset = _ingest_csv(tmp_path, [48], [48])
    cfg = small_config(dataset, str(tmp_path / "runs"), "data.crop_size=32", "train.name=tiny")
    with pytest.raises(DataError, match="1 image\\(s\\) for 2 workers"):
        fit(cfg, progress=False)
    assert not (tmp_path / "runs" / "tiny" / "metrics.jsonl").exists()


MICROSCOPY_MIN_IOU = 0.7  # foreground IoU after 6 epochs on 24 generated 64-px images; all-foreground scores ~0.2


@pytest.mark.slow  # ~20 s, a quality bar; their ingest and scaling: tests/data/test_intensity.py (default suite)
@pytest.mark.ray
def test_microscopy_images_ingest_and_train(small_config, ray_local, tmp_path) -> None:
    """12-bit data in 16-bit PNGs and float32 TIFF exports, in one set, reach the model with their real contrast."""
    from unet_dist.data.ingest import ingest
    from unet_dist.data.synthetic import generate_microscopy

    rows = []
    for fmt, seed in (("png12", 0), ("tiff_float", 1)):
        generate_microscopy(str(tmp_path / fmt), fmt=fmt, n=12, size=64, seed=seed)
        rows += [(f"{fmt}/images/{img.name}", f"{fmt}/masks/{img.stem}.png", "val" if i % 4 == 0 else "train")
                 for i, img in enumerate(sorted((tmp_path / fmt / "images").iterdir()))]
    csv = write_csv(tmp_path / "pairs.csv", rows)
    manifest = ingest(str(csv), str(tmp_path / "ds"), IngestConfig(split_column="split"), progress=False)
    scale = manifest["image_stats"]["scale"]
    assert scale["intensity"] == "auto" and set(scale["ranges"]) == {"uint16", "float32"}, scale
    cfg = small_config(str(tmp_path / "ds"), str(tmp_path / "runs"), "data.crop_size=64", "train.epochs=6",
                       "train.lr=0.01", "train.name=microscopy")
    summary = fit(cfg, progress=False)
    assert summary.best_val_iou >= MICROSCOPY_MIN_IOU, summary.to_json()
