"""Evaluate a checkpoint on one split of an ingested dataset, in this process.

Used after training (and by tests in a fresh process) to confirm that a stored checkpoint
reproduces the validation metrics it was reported with.
"""

from __future__ import annotations

from typing import Any

import torch

from unet_dist.config import Config, StorageConfig
from unet_dist.train.checkpoint import load_checkpoint
from unet_dist.train.loop import quiet_ray_logs, validate
from unet_dist.train.losses import create_loss


def evaluate(checkpoint: str, *, split: str = "val", dataset: str | None = None, storage: StorageConfig | None = None,
             batch_size: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """Metrics (iou, mean_iou, dice, pixel_acc, per-class, loss) of ``checkpoint`` on ``split``.

    The model and data settings come from the config stored in the checkpoint; ``dataset`` overrides
    the dataset URI. Starts a local Ray (for Ray Data) if none is running.
    """
    import ray

    from unet_dist.data.pipeline import build_datasets, iter_val_batches, pipeline_spec
    from unet_dist.models import create_unet

    state = load_checkpoint(checkpoint, storage)
    data = dict(state["config"])
    data.pop("storage", None)
    cfg = Config.model_validate(data)
    if storage is not None:
        cfg = cfg.model_copy(update={"storage": storage})
    if dataset:
        cfg.data.dataset = dataset
    if threads:
        torch.set_num_threads(threads)
    model = create_unet(cfg.model)
    model.load_state_dict(state["model"])
    started = False
    if not ray.is_initialized():
        ray.init(configure_logging=False, include_dashboard=False, log_to_driver=False)
        started = True
    quiet_ray_logs()
    try:
        ds = build_datasets(cfg.data, cfg.storage, cfg.model.in_channels, splits=(split,))[split]
        spec = pipeline_spec(cfg.data, cfg.storage, cfg.model.in_channels, pad_multiple=2 ** cfg.model.depth)
        loss_fn = create_loss(cfg.train.loss, cfg.model.num_classes, cfg.train.class_weights)
        batches = iter_val_batches(ds.iterator(), batch_size or cfg.data.val_batch_size, spec, 0, 1)
        out, _ = validate(model, batches, loss_fn, cfg, torch.device("cpu"), state.get("class_names"))
        out["epoch"] = state.get("epoch")
        out["checkpoint"] = checkpoint
        out["reported"] = state.get("metrics", {})
        return out
    finally:
        if started:
            ray.shutdown()
