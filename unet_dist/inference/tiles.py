"""Sliding-window inference: tile positions, a blending window, flip TTA and the class ids of a whole image.

Images larger than a tile are cut into overlapping tiles; each tile's class probabilities are weighted by a
separable Hann window (flat towards the image border, so border pixels keep their full weight), accumulated and
argmax'ed, so tile seams do not show. One tile without TTA is the model's own decision on the whole image,
identical to :meth:`~unet_dist.inference.model.LoadedModel.predict` and to ``evaluate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from unet_dist.errors import ConfigError
from unet_dist.inference.metrics import predict_labels
from unet_dist.inference.model import LoadedModel

FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
"""Test-time augmentation: identity, horizontal, vertical and both flips (dims of an ``N x C x H x W`` batch)."""


@dataclass(frozen=True)
class Tiling:
    """How an image is cut and scored: square tiles of ``tile`` pixels sharing at least ``overlap`` of a tile with
    each neighbour, ``batch_size`` tiles per forward pass, and optionally the four flips averaged."""

    tile: int = 256
    overlap: float = 0.25
    tta: bool = False
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.tile < 8:
            raise ConfigError(f"--tile {self.tile}: tiles must be at least 8 pixels (256 is a good start)")
        if not 0.0 <= self.overlap < 0.95:
            raise ConfigError(f"--overlap {self.overlap}: use a fraction of a tile in [0, 0.95), e.g. 0.25")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: need at least 1 tile per forward pass")


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Evenly spaced offsets of windows of ``tile`` pixels covering ``0..length``: the first at 0, the last ending at
    ``length``, neighbours sharing at least ``overlap * tile`` pixels. One window when ``length <= tile``."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def window_1d(size: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """A Hann window (positive everywhere) whose halves touching the image border are flat at 1."""
    w = torch.sin(math.pi * (torch.arange(size, dtype=torch.float64) + 0.5) / size) ** 2
    if at_start:
        w[: (size + 1) // 2] = 1.0
    if at_end:
        w[size // 2:] = 1.0
    return w.float()


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``N x K x H x W``; a single-logit binary head gives two channels (background, foreground)."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1.0 - p, p], dim=1)
    return torch.softmax(logits, dim=1)


def tile_probabilities(model: LoadedModel, batch: torch.Tensor, tta: bool) -> torch.Tensor:
    """Probabilities for a batch of normalised tiles, averaged over the four flips with ``tta``."""
    if not tta:
        return probabilities(model.logits(batch))
    total = None
    for dims in FLIPS:
        x = batch.flip(dims) if dims else batch
        p = probabilities(model.logits(x))
        p = p.flip(dims) if dims else p
        total = p if total is None else total + p
    return total / len(FLIPS)


def tile_boxes(height: int, width: int, tiling: Tiling) -> list[tuple[int, int, int, int]]:
    """``(top, left, tile_h, tile_w)`` of every tile of a ``height x width`` image, row by row."""
    th, tw = min(tiling.tile, height), min(tiling.tile, width)
    return [(y, x, th, tw) for y in tile_starts(height, th, tiling.overlap) for x in tile_starts(width, tw, tiling.overlap)]


@torch.no_grad()
def predict_tiled(model: LoadedModel, x: torch.Tensor, tiling: Tiling) -> torch.Tensor:
    """Class ids (``H x W`` int64, on the model's device) of one normalised ``C x H x W`` image."""
    _, height, width = x.shape
    boxes = tile_boxes(height, width, tiling)
    if len(boxes) == 1 and not tiling.tta:
        return predict_labels(model.logits(x.unsqueeze(0)))[0]
    acc: torch.Tensor | None = None
    for i in range(0, len(boxes), tiling.batch_size):
        chunk = boxes[i:i + tiling.batch_size]
        batch = torch.stack([x[:, y:y + h, left:left + w] for y, left, h, w in chunk])
        probs = tile_probabilities(model, batch, tiling.tta)
        if acc is None:
            acc = torch.zeros((probs.shape[1], height, width), dtype=torch.float32, device=probs.device)
        for (y, left, h, w), p in zip(chunk, probs):
            weight = torch.outer(window_1d(h, y == 0, y + h == height), window_1d(w, left == 0, left + w == width))
            acc[:, y:y + h, left:left + w] += p * weight.to(p.device)
    assert acc is not None
    return acc.argmax(0)
