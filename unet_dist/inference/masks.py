"""Predicted masks as files: names, pixel values per class, PNG encoding (the one format ``predict`` writes)."""

from __future__ import annotations

import io
import posixpath

import numpy as np
from PIL import Image

from unet_dist.data.codec import encode_png

PALETTE = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128),
], dtype=np.uint8)
"""Class colours of overlays and palette masks (class 0, background, is black); repeats after 20 classes."""


def mask_name(rel: str) -> str:
    """The mask's relative name for an image's relative name: the same path with a ``.png`` suffix."""
    return posixpath.splitext(rel)[0] + ".png"


def mask_values(num_classes: int, class_names: list[str]) -> dict[str, int]:
    """Class name -> pixel value in the written masks (0/255 for two classes, else the class id)."""
    k = max(2, num_classes)
    names = class_names if len(class_names) == k else [str(i) for i in range(k)]
    return {names[0]: 0, names[1]: 255} if k == 2 else {name: i for i, name in enumerate(names)}


def encode_mask(labels: np.ndarray, num_classes: int) -> bytes:
    """PNG of class ids: 0/255 grayscale for two classes, a palette PNG (value = class id) up to 256, else 16-bit."""
    k = max(2, num_classes)
    if k == 2:
        return encode_png((labels > 0).astype(np.uint8) * 255)
    if k > 256:
        return encode_png(labels.astype(np.uint16))
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(PALETTE[np.arange(256) % len(PALETTE)].reshape(-1).tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
