"""Small data sets written in the test: mixed sizes, CSV-controlled splits, brightened copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unet_dist.data.synthetic import sample


def write_pairs(folder: Path, sizes: list[int], seed: int = 0, gain: float = 1.0, prefix: str = "img") -> list[str]:
    """Synthetic binary pairs of the given sizes under ``folder/{images,masks}``; ``gain`` brightens images."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    names = []
    for i, size in enumerate(sizes):
        image, mask = sample(np.random.default_rng([seed, i]), size)
        image = np.clip(image.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        crop = image[: size, : max(16, size - 8 * (i % 3))]
        name = f"{prefix}-{i:03d}.png"
        Image.fromarray(crop[..., 0]).save(folder / "images" / name)
        Image.fromarray(mask[: size, : crop.shape[1]]).save(folder / "masks" / name)
        names.append(name)
    return names


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A CSV manifest ``image,mask,split`` with paths relative to its folder."""
    path.write_text("image,mask,split\n" + "".join(f"{i},{m},{s}\n" for i, m, s in rows))
    return path
