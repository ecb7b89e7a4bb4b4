"""Evaluate a checkpoint on one split of an ingested dataset, in this process.

The model, its settings and its normalisation statistics come from the checkpoint (so the same checkpoint
scores the same images identically whichever data set holds them); the images come from the dataset the
checkpoint was trained on, or ``dataset``. Connects like training does (``resources.address`` /
``RAY_ADDRESS``, else a local Ray) for Ray Data.
"""

from __future__ import annotations

from typing import Any

import torch

from unet_dist.config import StorageConfig
from unet_dist.train.inference import load_model
from unet_dist.train.loop import validate
from unet_dist.train.losses import create_loss
from unet_dist.train.session import ray_session


def evaluate(checkpoint: str, *, split: str = "val", dataset: str | None = None, storage: StorageConfig | None = None,
             batch_size: int | None = None, threads: int | None = None, address: str | None = None) -> dict[str, Any]:
    """Metrics (iou, mean_iou, dice, pixel_acc, per-class, confusion matrix, loss) of ``checkpoint`` on ``split``."""
    from unet_dist.data.manifest import read_manifest
    from unet_dist.data.pipeline import build_datasets, iter_val_batches, pipeline_spec

    loaded = load_model(checkpoint, storage)
    cfg = loaded.cfg
    if dataset:
        cfg.data.dataset = dataset
    if address:
        cfg.resources.address = address
    if threads:
        torch.set_num_threads(threads)
    manifest = read_manifest(cfg.data.dataset, cfg.storage)
    with ray_session(cfg, include_dashboard=False):
        ds = build_datasets(cfg.data, cfg.storage, cfg.model.in_channels, manifest, splits=(split,))[split]
        spec = pipeline_spec(cfg.data, cfg.storage, cfg.model.in_channels, manifest,
                             pad_multiple=loaded.state["inference"]["pad_multiple"])
        spec = spec.with_stats(loaded.image_stats)
        loss_fn = create_loss(cfg.train.loss, cfg.model.num_classes, cfg.train.class_weights)
        batches = iter_val_batches(ds.iterator(), batch_size or cfg.data.val_batch_size, spec, 0, 1)
        out, _ = validate(loaded.model, batches, loss_fn, cfg, torch.device("cpu"), loaded.class_names or None)
    return {**out, "epoch": loaded.state.get("epoch"), "checkpoint": checkpoint, "dataset": cfg.data.dataset,
            "reported": loaded.state.get("metrics", {})}

