"""Intensity scaling: which pixel range maps to 0..1, per dtype, and the mean/std in those units.

Ingest summarises each image (:func:`summarise`), then :func:`image_stats` picks the range per dtype from
``ingest.intensity`` and computes mean/std after that scaling. The result is the manifest's
``image_stats``; :func:`~unet_dist.data.codec.to_model_input` needs nothing else to normalise an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unet_dist.config import IngestConfig
from unet_dist.data.codec import dtype_range

SAMPLE = 1024


@dataclass
class PixelSummary:
    """Raw-unit sums, extremes and (for percentiles) a pixel sample of one image."""

    dtype: str
    channels: int
    count: int
    total: np.ndarray
    squares: np.ndarray
    low: float
    high: float
    sample: np.ndarray | None = None


def summarise(image: np.ndarray, keep_sample: bool) -> PixelSummary:
    """Per-channel raw sums of an ``H x W x C`` image; ``keep_sample`` keeps up to SAMPLE seeded pixels."""
    x = image.reshape(-1, image.shape[-1]).astype(np.float64)
    sample = None
    if keep_sample:
        flat = image.reshape(-1)
        sample = flat[np.random.default_rng(flat.size).integers(0, flat.size, min(SAMPLE, flat.size))].astype(np.float32)
    return PixelSummary(image.dtype.name, image.shape[-1], x.shape[0], x.sum(0), (x * x).sum(0),
                        float(x.min()), float(x.max()), sample)


def _observed_bits(high: float) -> float:
    """``2**bits - 1`` for the bit depth that holds ``high`` (at least 8 bits)."""
    return float(2 ** max(int(high).bit_length(), 8) - 1)


def _range(group: list[PixelSummary], cfg: IngestConfig) -> tuple[float, float]:
    dtype = group[0].dtype
    mode = cfg.intensity
    if mode == "dtype" or (mode == "auto" and dtype == "uint8"):
        return dtype_range(dtype)
    if mode == "auto" and np.issubdtype(np.dtype(dtype), np.integer):
        return 0.0, _observed_bits(max(s.high for s in group))
    if mode == "percentile":
        pooled = np.concatenate([s.sample for s in group if s.sample is not None])
        low, high = (float(v) for v in np.percentile(pooled, [cfg.percentile_low, cfg.percentile_high]))
    else:
        low, high = min(s.low for s in group), max(s.high for s in group)
    return low, (high if high > low else low + 1.0)


def scale_ranges(summaries: list[PixelSummary], is_train: list[bool], cfg: IngestConfig) -> dict[str, list[float]]:
    """``dtype -> [low, high]`` for every dtype present, from its train images (all images if none in train)."""
    ranges: dict[str, list[float]] = {}
    for dtype in sorted({s.dtype for s in summaries}):
        of_dtype = [(s, t) for s, t in zip(summaries, is_train) if s.dtype == dtype]
        group = [s for s, t in of_dtype if t] or [s for s, _ in of_dtype]
        ranges[dtype] = list(_range(group, cfg))
    return ranges


def image_stats(summaries: list[PixelSummary], is_train: list[bool], cfg: IngestConfig) -> dict:
    """The manifest's ``image_stats``: ``scale`` plus per-channel mean/std in scaled units (train images)."""
    ranges = scale_ranges(summaries, is_train, cfg)
    chans = max(s.channels for s in summaries)
    used = [s for s, t in zip(summaries, is_train) if t] or summaries
    total, squares, n = np.zeros(chans), np.zeros(chans), 0
    for s in used:
        low, high = ranges[s.dtype]
        r = high - low
        st, ss = (s.total - s.count * low) / r, (s.squares - 2 * low * s.total + s.count * low * low) / (r * r)
        if s.channels != chans:
            st, ss = np.repeat(st, chans), np.repeat(ss, chans)
        total, squares, n = total + st, squares + ss, n + s.count
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(squares / max(n, 1) - mean * mean, 0.0))
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "channels": chans,
            "units": "(pixel - low) / (high - low) with [low, high] = scale.ranges[dtype]",
            "computed_on": "train" if used is not summaries else "all",
            "scale": _scale_record(ranges, cfg)}


def _scale_record(ranges: dict[str, list[float]], cfg: IngestConfig) -> dict:
    record: dict = {"intensity": cfg.intensity, "ranges": ranges}
    if cfg.intensity == "percentile":
        record["percentiles"] = [cfg.percentile_low, cfg.percentile_high]
    return record
