"""Deterministic synthetic segmentation data: textured blobs on noisy backgrounds.

Written in the same layout as real data (``images/*.png``, ``masks/*.png``, paired by stem), so it goes
through the normal ingest. It is the embedded default for ``make demo`` and fast tests, and is easy
enough that a small U-Net reaches a high IoU within a few epochs. :func:`generate_microscopy` writes the
same pattern as microscopy files do: 12-bit data in 16-bit PNG, dim 16-bit TIFF, or float32 TIFF.
"""

from __future__ import annotations

import io
import json
from typing import Literal

import numpy as np

from unet_dist.config import IngestConfig, StorageConfig
from unet_dist.data.codec import encode_png
from unet_dist.storage import resolve

SyntheticMode = Literal["binary", "multiclass"]
MicroscopyFormat = Literal["png12", "tiff16", "tiff_float"]
MICROSCOPY_FORMATS: tuple[str, ...] = ("png12", "tiff16", "tiff_float")

CLASS_NAMES: dict[str, list[str]] = {
    "binary": ["background", "blob"],
    "multiclass": ["background", "bright_blob", "striped_blob"],
}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bilinearly."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _ellipse(yy: np.ndarray, xx: np.ndarray, centre: np.ndarray, radii: np.ndarray, theta: float) -> np.ndarray:
    """The squared normalised radius of the ellipse at ``centre`` (y, x) with ``radii`` (y, x), turned by
    ``theta``, at every pixel (<= 1 inside it)."""
    (cy, cx), (ry, rx) = centre, radii
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
    return u * u + v * v


def sample(rng: np.random.Generator, size: int, mode: SyntheticMode = "binary", channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image H x W x C uint8, mask H x W uint8)`` pair drawn from ``rng``."""
    out, mask = render(rng, size, mode, channels)
    return (out * 255).round().astype(np.uint8), mask


def render(rng: np.random.Generator, size: int, mode: SyntheticMode = "binary", channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image H x W x C float64 in [0, 1], mask H x W uint8)`` pair drawn from ``rng``: bright textured
    blobs on a darker smooth background, plus noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    n_blobs = int(rng.integers(2, 6))
    for _ in range(n_blobs):
        centre = rng.uniform(0.1, 0.9, 2) * size
        inside = _ellipse(yy, xx, centre, rng.uniform(0.06, 0.18, 2) * size, rng.uniform(0, np.pi)) <= 1.0
        mask[inside] = 1 if mode == "binary" else int(rng.integers(1, 3))
    background = 0.30 + 0.12 * _smooth_noise(rng, size, 4)
    freq = rng.uniform(0.35, 0.6)
    stripes = 0.5 + 0.5 * np.sin(freq * (xx + yy))
    texture = 0.5 + 0.5 * np.sin(0.9 * xx) * np.sin(0.9 * yy)
    img = background.copy()
    img[mask == 1] = 0.62 + 0.10 * texture[mask == 1]
    if mode == "multiclass":
        img[mask == 2] = 0.45 + 0.35 * stripes[mask == 2]
    img = img + rng.normal(0.0, 0.05, img.shape)
    img = np.clip(img, 0, 1)
    out = np.repeat(img[..., None], channels, axis=2)
    if channels == 3:
        tint = rng.uniform(0.85, 1.15, 3)
        out = np.clip(out * tint, 0, 1)
    return out, mask


def generate(
    dest: str,
    n: int = 32,
    size: int = 128,
    mode: SyntheticMode = "binary",
    seed: int = 0,
    channels: int = 1,
    storage: StorageConfig | None = None,
) -> str:
    """Write ``n`` synthetic pairs to ``dest/images/synthetic-NNNN.png`` and ``dest/masks/...``; returns dest's URI.

    Same arguments give byte-identical files. Masks hold class ids (binary: 0/1).
    """
    if mode not in CLASS_NAMES:
        raise ValueError(f"synthetic mode must be one of {sorted(CLASS_NAMES)}, got {mode!r}")
    if channels not in (1, 3):
        raise ValueError(f"synthetic channels must be 1 or 3, got {channels}")
    root = resolve(dest, storage)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        image, mask = sample(rng, size, mode, channels)
        stem = f"synthetic-{i:04d}"
        root.join("images", f"{stem}.png").write_bytes(encode_png(image))
        root.join("masks", f"{stem}.png").write_bytes(encode_png(mask))
    info = {"generator": "unet_dist.data.synthetic", "n": n, "size": size, "mode": mode, "seed": seed,
            "channels": channels, "class_names": CLASS_NAMES[mode]}
    root.join("SYNTHETIC.json").write_text(json.dumps(info, indent=2) + "\n")
    return root.uri


def _microscopy_file(image: np.ndarray, fmt: MicroscopyFormat) -> tuple[str, bytes]:
    """``(suffix, bytes)`` of a [0, 1] gray image as a microscope would save it."""
    import tifffile

    gray = image[..., 0]
    buf = io.BytesIO()
    if fmt == "png12":
        from PIL import Image

        Image.fromarray((gray * 4095).round().astype("<u2")).save(buf, format="PNG")
        return ".png", buf.getvalue()
    if fmt == "tiff16":
        tifffile.imwrite(buf, (100 + gray * 3000).round().astype(np.uint16))
    else:
        tifffile.imwrite(buf, (gray * 1000.0 - 50.0).astype(np.float32))
    return ".tif", buf.getvalue()


def generate_microscopy(
    dest: str,
    fmt: MicroscopyFormat = "png12",
    n: int = 16,
    size: int = 64,
    seed: int = 0,
    storage: StorageConfig | None = None,
) -> str:
    """Write ``n`` binary blob pairs in a microscopy file format to ``dest/images`` and ``dest/masks``; returns dest's URI.

    ``png12``: 12-bit data (0..4095) in 16-bit PNG; ``tiff16``: 16-bit TIFF holding 100..3100 (camera offset,
    ~12 bits used); ``tiff_float``: float32 TIFF holding -50..950. Masks are 0/1 PNG (ingest as binary).
    Same arguments give byte-identical files; the pattern is that of :func:`generate` (learnable).
    """
    if fmt not in MICROSCOPY_FORMATS:
        raise ValueError(f"microscopy format must be one of {list(MICROSCOPY_FORMATS)}, got {fmt!r}")
    root = resolve(dest, storage)
    for i in range(n):
        image, mask = render(np.random.default_rng([seed, i]), size, "binary", 1)
        suffix, data = _microscopy_file(image, fmt)
        root.join("images", f"micro-{i:04d}{suffix}").write_bytes(data)
        root.join("masks", f"micro-{i:04d}.png").write_bytes(encode_png(mask))
    info = {"generator": "unet_dist.data.synthetic.generate_microscopy", "format": fmt, "n": n, "size": size, "seed": seed,
            "class_names": CLASS_NAMES["binary"]}
    root.join("SYNTHETIC.json").write_text(json.dumps(info, indent=2) + "\n")
    return root.uri


# (modality, share of the set, image sides drawn from, nucleus radius range in px)
HETEROGENEOUS_RECIPE: tuple[tuple[str, float, tuple[int, ...], tuple[float, float]], ...] = (
    ("fluorescence", 0.80, (96, 112, 128, 144), (3.0, 7.0)),
    ("brightfield", 0.12, (256, 320), (5.0, 11.0)),
    ("brightfield", 0.08, (512, 640), (6.0, 14.0)),
)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """A separable Gaussian blur of an H x W array (reflected edges): optics that soften every edge."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, r, mode="reflect")
    rows = np.stack([np.convolve(row, k, mode="valid") for row in pad])
    return np.stack([np.convolve(col, k, mode="valid") for col in rows.T]).T


def _random_ellipse(yy: np.ndarray, xx: np.ndarray, rng: np.random.Generator, size: int, radius: tuple[float, float]) -> np.ndarray:
    """:func:`_ellipse` of one ellipse placed anywhere in the image, radii drawn from ``radius``."""
    centre = rng.uniform(0, size, 2)
    radii = rng.uniform(*radius, 2)
    return _ellipse(yy, xx, centre, radii, rng.uniform(0, np.pi))


def render_nuclei(rng: np.random.Generator, size: int, modality: str, radius: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """One sparse nuclei pair: ``(image H x W x C float64 in [0, 1], mask H x W uint8)``. ``fluorescence``: textured
    nuclei on a dark background, gray; ``brightfield``: dark, tinted nuclei on a bright, unevenly lit background, RGB.
    Objects cover a few percent of the image whatever its size. What makes it a learning problem, as in real
    microscopy: exposure varies per image and brightness per nucleus (some are dim), out-of-focus debris as bright
    or dark as a nucleus but diffuse (not in the mask), blurred optics and noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    signal = np.zeros((size, size), np.float32)
    n = max(1, int(rng.poisson(0.03 * size * size / (np.pi * np.mean(radius) ** 2))))
    texture = 0.5 + 0.5 * np.sin(0.8 * xx + rng.uniform(0, 6)) * np.sin(0.8 * yy)
    for _ in range(n):
        inside = _random_ellipse(yy, xx, rng, size, radius) <= 1.0
        mask[inside] = 1
        signal[inside] = rng.uniform(0.25, 1.0) * (0.8 + 0.2 * texture[inside])
    for _ in range(int(rng.poisson(n / 2))):  # debris: diffuse, no edge
        r2 = _random_ellipse(yy, xx, rng, size, (radius[0] * 1.5, radius[1] * 2.5))
        signal += rng.uniform(0.25, 0.9) * np.exp(-1.5 * r2) * (mask == 0)
    signal = _blur(np.minimum(signal, 1.0), 1.0)
    light = _smooth_noise(rng, size, 3)
    if modality == "fluorescence":
        gain = rng.uniform(0.3, 1.0)
        img = (0.04 + 0.05 * light + 0.7 * gain * signal + rng.normal(0.0, 0.03, signal.shape))[..., None]
    else:
        img = 0.70 + 0.20 * light - 0.40 * signal + rng.normal(0.0, 0.04, signal.shape)
        img = img[..., None] * np.array([0.95, 0.80, 1.05]) * rng.uniform(0.9, 1.1, 3)
    return np.clip(img, 0, 1), mask


def generate_heterogeneous(dest: str, n: int = 120, seed: int = 0, storage: StorageConfig | None = None) -> str:
    """Write a heterogeneous binary set as users bring (:data:`HETEROGENEOUS_RECIPE`): mostly small gray
    fluorescence images, some larger and a few large RGB brightfield ones, sparse objects everywhere; returns dest's
    URI. Same arguments give byte-identical files (the recipe is committed, never the data)."""
    root = resolve(dest, storage)
    shares = np.cumsum([share for _, share, _, _ in HETEROGENEOUS_RECIPE])
    for i in range(n):
        rng = np.random.default_rng([seed, i, 7])
        modality, _, sides, radius = HETEROGENEOUS_RECIPE[int(np.searchsorted(shares, (i + 0.5) / n))]
        image, mask = render_nuclei(rng, int(rng.choice(sides)), modality, radius)
        stem = f"{modality}-{i:04d}"
        root.join("images", f"{stem}.png").write_bytes(encode_png((image * 255).round().astype(np.uint8)))
        root.join("masks", f"{stem}.png").write_bytes(encode_png(mask))
    info = {"generator": "unet_dist.data.synthetic.generate_heterogeneous", "n": n, "seed": seed,
            "recipe": [list(r) for r in HETEROGENEOUS_RECIPE], "class_names": CLASS_NAMES["binary"]}
    root.join("SYNTHETIC.json").write_text(json.dumps(info, indent=2) + "\n")
    return root.uri


def ingest_config(mode: SyntheticMode = "binary", **overrides: object) -> IngestConfig:
    """The IngestConfig matching synthetic data of ``mode``."""
    return IngestConfig(mask_mode="binary" if mode == "binary" else "multiclass", class_names=CLASS_NAMES[mode], **overrides)


def demo_dataset(
    root: str,
    n: int = 32,
    size: int = 128,
    mode: SyntheticMode = "binary",
    seed: int = 0,
    storage: StorageConfig | None = None,
    progress: bool = False,
) -> str:
    """Generate and ingest a synthetic set under ``root`` (``raw/`` and ``dataset/``) unless one is there; returns the dataset URI."""
    from unet_dist.data.ingest import ingest
    from unet_dist.data.manifest import dataset_exists

    base = resolve(root, storage)
    ds = base.join("dataset")
    if not dataset_exists(ds.uri, storage):
        raw = generate(base.join("raw").uri, n=n, size=size, mode=mode, seed=seed, storage=storage)
        ingest(raw, ds.uri, ingest_config(mode, seed=seed), storage=storage, progress=progress)
    return ds.uri
