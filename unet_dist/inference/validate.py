"""The one evaluation pass: metrics, exact loss and overlays of a model over batches of whole images.

The training loop's per-epoch validation (with ``reduce`` summing over the DDP ranks) and ``unet-dist evaluate``
(one process) both run :func:`validate`, so a checkpoint's evaluated metrics equal the ones training reported.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from unet_dist.config import Config
from unet_dist.inference.metrics import EpochMeter, Reduce, no_reduce, predict_labels
from unet_dist.inference.overlay import overlay
from unet_dist.losses import remap_ignore


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Any, loss_fn: torch.nn.Module, cfg: Config, device: torch.device,
             class_names: list[str] | None, autocast: Any = contextlib.nullcontext,
             n_images: int = 0, per_image: list[tuple[Any, torch.Tensor]] | None = None,
             reduce: Reduce = no_reduce) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Metrics of ``model`` over ``batches`` (sums passed through ``reduce``: the all-reduce under DDP) and up to
    ``n_images`` overlays.

    The one evaluation pass: the training loop's per-epoch validation and ``unet-dist evaluate``. With
    ``per_image``, appends ``(id, confusion matrix)`` for each image (ids from a batch's ``"id"``, if it has one).

    ``loss`` is exact and the same whatever the batch size and worker count: ``loss_fn`` on each image alone, weighted
    by its valid pixels (target >= 0: padding and ignored pixels are not), summed in float64 and passed through
    ``reduce``.
    """
    model.eval()
    meter = EpochMeter(cfg.model.num_classes, class_names, reduce)
    loss_sums = torch.zeros(2, dtype=torch.float64)  # sum of loss_i * valid pixels_i, valid pixels
    shown: list[torch.Tensor] = []
    for batch in batches:
        x = torch.as_tensor(batch["image"]).to(device)
        y = remap_ignore(torch.as_tensor(batch["mask"]).to(device).long(), cfg.train.ignore_index)
        with autocast():
            logits = model(x).float()
        cms = meter.update(logits, y)
        loss_sums += image_loss_sums(loss_fn, logits, y)
        if per_image is not None:
            ids = batch.get("id") or [None] * x.shape[0]
            per_image += [(ids[i], cms[i]) for i in range(x.shape[0])]
        if len(shown) < n_images:
            pred = predict_labels(logits).cpu()
            for i in range(min(n_images - len(shown), x.shape[0])):
                shown.append(overlay(x[i].cpu(), pred[i], y[i].cpu()))
    out = meter.compute()
    loss_sums = reduce(loss_sums)
    out["loss"] = float(loss_sums[0] / loss_sums[1]) if loss_sums[1] > 0 else float("nan")
    return out, shown


def image_loss_sums(loss_fn: torch.nn.Module, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[sum of loss_i * valid_i, sum of valid_i]`` (float64) over a batch's images, ``loss_i`` the loss of image
    ``i`` alone and ``valid_i`` its pixels with target >= 0; an image without a valid pixel adds nothing."""
    out = torch.zeros(2, dtype=torch.float64)
    for i in range(y.shape[0]):
        valid = int((y[i] >= 0).sum())
        if valid:
            out[0] += float(loss_fn(logits[i:i + 1], y[i:i + 1])) * valid
            out[1] += valid
    return out
