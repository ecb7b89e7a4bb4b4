"""Evaluate a checkpoint on one split of an ingested dataset, in this process, with no Ray.

The model, its settings and its normalisation statistics come from the checkpoint (so the same checkpoint
scores the same images identically whichever data set holds them); the images come from the dataset the
checkpoint was trained on, or ``dataset``. The split's Parquet shards are read with pyarrow (local or S3),
batched as validation batches them and scored by the training loop's :func:`~unet_dist.inference.validate.validate`,
so the aggregate metrics equal the training-time ones exactly. ``unet-dist evaluate`` and ``unet-dist report``
share this one path.
"""

from __future__ import annotations

from typing import Any, Container, Iterator

import torch

from unet_dist.config import StorageConfig
from unet_dist.errors import DataError
from unet_dist.inference.metrics import scores
from unet_dist.inference.model import LoadedModel, load_model
from unet_dist.inference.validate import validate
from unet_dist.losses import create_loss

Row = tuple[str, bytes, bytes]


def split_count(manifest: dict[str, Any], split: str) -> int:
    """Images in one split of a dataset (0 if it has none)."""
    return int((manifest.get("splits", {}).get(split) or {}).get("count", 0))


def split_rows(manifest: dict[str, Any], split: str, storage: StorageConfig | None = None,
               ids: Container[str] | None = None) -> Iterator[Row]:
    """``(id, encoded image, encoded mask)`` of one split in shard order, read with pyarrow; only ``ids`` if given."""
    import pyarrow.parquet as pq

    from unet_dist.data.manifest import split_paths

    if not (manifest.get("splits", {}).get(split) or {}).get("files"):
        raise DataError(f"dataset {manifest['uri']} has no {split} images; re-ingest with a non-zero {split} share in "
                        "ingest.split, or choose another split")
    paths, fs = split_paths(manifest, split, storage)
    for path in paths:
        with fs.open_input_file(path) as f:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=16, columns=["id", "image", "mask"]):
                for image_id, image, mask in zip(*(rb.column(c).to_pylist() for c in ("id", "image", "mask"))):
                    if ids is None or image_id in ids:
                        yield str(image_id), image, mask


def eval_batches(rows: Iterator[Row], batch_size: int, spec: Any) -> Iterator[dict[str, Any]]:
    """Whole images with their ids, batched as :func:`~unet_dist.data.pipeline.iter_val_batches` batches them
    (each padded to its own size rounded up to ``pad_multiple``; a batch holds one padded shape only)."""
    from unet_dist.data.pipeline import collate_whole, decode_row, padded_shape

    def collate(bucket: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
        return {**collate_whole([(x, y) for _, x, y in bucket], spec.pad_multiple), "id": [i for i, _, _ in bucket]}

    buckets: dict[tuple[int, int], list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
    for image_id, image, mask in rows:
        x, y = decode_row(image, mask, spec)
        bucket = buckets.setdefault(padded_shape(*y.shape, spec.pad_multiple), [])
        bucket.append((image_id, x, y))
        if len(bucket) == batch_size:
            yield collate(bucket)
            bucket.clear()
    for bucket in buckets.values():
        if bucket:
            yield collate(bucket)


def image_table(per_image: list[tuple[Any, torch.Tensor]], class_names: list[str] | None) -> list[dict[str, Any]]:
    """One row per image, worst first: ``iou`` (foreground IoU for two classes, else mean IoU), ``dice``, ``mean_iou``,
    ``pixel_acc``, ``pixels`` and its confusion matrix (rows truth, columns prediction); the sum of the matrices is
    the split's."""
    rows = []
    for image_id, cm in per_image:
        s = scores(cm, class_names)
        rows.append({"id": image_id, "iou": s["iou"], "dice": s["dice"], "mean_iou": s["mean_iou"],
                     "pixel_acc": s["pixel_acc"], "pixels": int(cm.sum()), "confusion_matrix": cm.tolist()})
    return sorted(rows, key=lambda r: (r["iou"], r["dice"], str(r["id"])))


def evaluate_model(loaded: LoadedModel, manifest: dict[str, Any], split: str = "val", *,
                   batch_size: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Metrics of an already loaded model on one split of the dataset ``manifest`` describes, plus ``per_image``."""
    from unet_dist.data.pipeline import pipeline_spec

    cfg = loaded.cfg
    spec = pipeline_spec(cfg.data, cfg.storage, cfg.model.in_channels, manifest,
                         pad_multiple=loaded.state["inference"]["pad_multiple"]).with_stats(loaded.image_stats)
    loss_fn = create_loss(cfg.train.loss, cfg.model.num_classes, cfg.train.class_weights)
    rows = split_rows(manifest, split, cfg.storage)
    if progress:
        from rich.console import Console
        from rich.progress import track

        rows = track(rows, total=split_count(manifest, split), description=f"evaluating {split}",
                     console=Console(stderr=True), transient=True)
    per_image: list[tuple[Any, torch.Tensor]] = []
    batches = eval_batches(rows, batch_size or cfg.data.val_batch_size, spec)
    out, _ = validate(loaded.model, batches, loss_fn, cfg, torch.device("cpu"), loaded.class_names or None,
                      per_image=per_image)
    return {**out, "split": split, "per_image": image_table(per_image, loaded.class_names or None)}


def evaluate(checkpoint: str, *, split: str = "val", dataset: str | None = None, storage: StorageConfig | None = None,
             batch_size: int | None = None, threads: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Metrics (iou, mean_iou, dice, pixel_acc, per-class, confusion matrix, loss) of ``checkpoint`` on ``split``,
    and ``per_image`` (:func:`image_table`)."""
    from unet_dist.data.manifest import read_manifest

    if threads:
        torch.set_num_threads(threads)
    loaded = load_model(checkpoint, storage)
    manifest = read_manifest(dataset or loaded.cfg.data.dataset, loaded.cfg.storage)
    out = evaluate_model(loaded, manifest, split, batch_size=batch_size, progress=progress)
    return {**out, "epoch": loaded.state.get("epoch"), "checkpoint": checkpoint, "dataset": manifest["uri"],
            "reported": loaded.state.get("metrics", {})}
