"""Overlays: a prediction drawn over its image, against the truth (validation, report) or alone (``predict``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from unet_dist.data.codec import dtype_range, encode_png, intensity_range
from unet_dist.errors import DataError
from unet_dist.inference.masks import PALETTE

OVERLAY_ALPHA = 0.4


def overlay(image: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RGB ``3 x H x W`` in [0, 1]: the image in gray, true positives green, false positives red, false negatives blue.

    "Positive" is any non-background class (id > 0); ignored pixels (target < 0) stay gray.
    """
    gray = image[:1].float()
    gray = (gray - gray.min()) / (gray.max() - gray.min()).clamp(min=1e-6)
    rgb = gray.repeat(3, 1, 1) * 0.6
    valid = target >= 0
    p, t = (pred > 0) & valid, (target > 0) & valid
    for ch, m in ((1, p & t), (0, p & ~t), (2, ~p & t)):
        rgb[ch][m] = 1.0
    return rgb.clamp(0, 1)


def display_rgb(pixels: np.ndarray, stats: dict[str, Any] | None) -> np.ndarray:
    """8-bit RGB of an ``H x W x C`` image, scaled by the range the model scales it by."""
    try:
        low, high = intensity_range(pixels.dtype, stats)
    except DataError:
        low, high = dtype_range(pixels.dtype)
    v = np.clip((pixels.astype(np.float32) - low) / max(high - low, 1e-12), 0.0, 1.0)
    rgb = np.repeat(v, 3, axis=-1) if v.shape[-1] == 1 else v[..., :3]
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay_png(pixels: np.ndarray, labels: np.ndarray, stats: dict[str, Any] | None) -> bytes:
    """The image with every non-background class tinted in its colour and its outline drawn solid."""
    rgb = display_rgb(pixels, stats).astype(np.float32)
    colors = PALETTE[labels % len(PALETTE)].astype(np.float32)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    fg = labels > 0
    rgb[fg] = (1.0 - OVERLAY_ALPHA) * rgb[fg] + OVERLAY_ALPHA * colors[fg]
    rgb[fg & edge] = colors[fg & edge]
    return encode_png((rgb + 0.5).astype(np.uint8))
