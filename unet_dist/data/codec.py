"""Decoding, lossless encoding and the one model-input normalisation.

Images are ``H x W x C`` numpy arrays (uint8, uint16 or finite float, C in {1, 3}); masks are ``H x W``
integer arrays. :func:`to_model_input` is the single place where pixels become a normalised float tensor,
shared by training, validation and ``predict`` on new images; the manifest's ``image_stats`` (which
checkpoints carry) fully describe it.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from unet_dist.data.problems import PairError, ProblemKind
from unet_dist.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_LUMA = (0.299, 0.587, 0.114)


def _read(source: bytes | str | os.PathLike[str]) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    from unet_dist.storage import resolve

    return resolve(source).read_bytes()


def _is_tiff(data: bytes) -> bool:
    return data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def decode_array(source: bytes | str | os.PathLike[str]) -> np.ndarray:
    """Raw pixel array as stored (H x W, H x W x C, palette indices for 'P' images); raises DataError."""
    data = _read(source)
    try:
        if _is_tiff(data):
            import tifffile

            arr = tifffile.imread(io.BytesIO(data))
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
                arr = np.moveaxis(arr, 0, -1)
        else:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.mode in ("I;16", "I;16B", "I;16L"):
                    arr = np.asarray(im, dtype=np.uint16)
                elif im.mode == "I":
                    arr = np.asarray(im).astype(np.int64)
                    if arr.min() >= 0 and arr.max() <= 65535:
                        arr = arr.astype(np.uint16)
                elif im.mode in ("L", "P", "RGB", "RGBA", "1"):
                    arr = np.asarray(im if im.mode != "1" else im.convert("L"))
                elif im.mode == "LA":
                    arr = np.asarray(im)[..., :1]
                else:
                    arr = np.asarray(im.convert("RGB"))
    except DataError:
        raise
    except Exception as err:
        raise PairError(ProblemKind.UNDECODABLE, f"cannot decode image ({type(err).__name__}: {err})") from None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise PairError(ProblemKind.BAD_CHANNELS, f"unsupported array shape {arr.shape}: expected H x W or H x W x C")
    return arr


def decode_image(source: bytes | str | os.PathLike[str]) -> np.ndarray:
    """An image as ``H x W x C`` (C = 1 or 3; RGBA drops alpha, palette expands to RGB): uint8, uint16, or
    float32/float64 (refused when any pixel is NaN or infinite)."""
    data = _read(source)
    if not _is_tiff(data):
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.mode == "P":
                    return np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))[..., :3].copy()
        except Exception as err:
            raise PairError(ProblemKind.UNDECODABLE, f"cannot decode image ({type(err).__name__}: {err})") from None
    arr = decode_array(data)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.shape[-1] == 2:
        arr = arr[..., :1]
    elif arr.shape[-1] not in (1, 3):
        raise PairError(ProblemKind.BAD_CHANNELS, f"image has {arr.shape[-1]} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    return np.ascontiguousarray(_pixel_dtype(arr))


_HEADER_KINDS = {"1": (1, 8), "L": (1, 8), "LA": (1, 8), "P": (3, 8), "RGB": (3, 8), "RGBA": (3, 8),
                 "I;16": (1, 16), "I;16B": (1, 16), "I;16L": (1, 16)}


def image_kind(source: bytes | str | os.PathLike[str]) -> tuple[int, int]:
    """``(channels, bit depth)`` that :func:`decode_image` gives, read from the header where the PNG/JPEG mode
    says it (a split plan reads every image's kind before ingest decodes it); decodes anything else."""
    data = _read(source)
    if not _is_tiff(data):
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.mode in _HEADER_KINDS:
                    return _HEADER_KINDS[im.mode]
        except Exception:
            pass
    image = decode_image(data)
    return image.shape[-1], image.dtype.itemsize * 8


def _pixel_dtype(arr: np.ndarray) -> np.ndarray:
    """uint8/uint16 as they are, other non-negative integers as uint16, floats as float32/64 if finite."""
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise PairError(ProblemKind.NON_FINITE, f"image has {bad} NaN or infinite pixels; replace them (e.g. with 0) before ingest")
        return arr if arr.dtype == np.float64 else arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.uint16)
    raise PairError(ProblemKind.BAD_DTYPE, f"image dtype {arr.dtype} is not supported; use 8- or 16-bit unsigned integers or float")


def decode_mask(source: bytes | str | os.PathLike[str]) -> np.ndarray:
    """A label mask as ``H x W`` (palette PNGs give their indices); multi-channel masks must be gray-equal."""
    arr = decode_array(source)
    if arr.ndim == 3:
        if arr.shape[-1] == 1 or all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[-1], 3))):
            arr = arr[..., 0]
        else:
            raise PairError(ProblemKind.BAD_MASK_VALUES, f"mask has {arr.shape[-1]} differing channels; save masks as single-channel label ids or a palette PNG")
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        if not np.all(np.mod(arr, 1) == 0):
            raise PairError(ProblemKind.BAD_MASK_VALUES, f"mask holds non-integer values (dtype {arr.dtype}); masks must hold integer labels")
    return np.ascontiguousarray(arr.astype(np.int64))


def encode_png(arr: np.ndarray) -> bytes:
    """Lossless PNG of an ``H x W``/``H x W x C`` uint8 or uint16 array (16-bit kept for gray only)."""
    a = arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
    if a.dtype == np.uint16:
        if a.ndim != 2:
            raise DataError("16-bit RGB cannot be stored as PNG here; use encode_lossless (zlib TIFF)")
        im = Image.fromarray(a.astype("<u2", copy=False))
    elif a.dtype == np.uint8:
        im = Image.fromarray(a)
    else:
        raise DataError(f"cannot encode dtype {a.dtype}; expected uint8 or uint16")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_lossless(arr: np.ndarray) -> bytes:
    """PNG where PNG holds the pixels exactly; zlib TIFF for 16-bit RGB and for float images (bit-exact).

    Readers need not care which: :func:`decode_image` sniffs the format.
    """
    is_float = np.issubdtype(arr.dtype, np.floating)
    if is_float or (arr.dtype == np.uint16 and arr.ndim == 3 and arr.shape[-1] > 1):
        import tifffile

        a = arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.ascontiguousarray(a), compression="zlib", photometric="rgb" if a.ndim == 3 else "minisblack")
        return buf.getvalue()
    return encode_png(arr)


def dtype_range(dtype: np.dtype | str) -> tuple[float, float]:
    """The pixel range a dtype implies: 0..255, 0..65535, floats taken as 0..1 (the ``dtype`` intensity mode)."""
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        return 0.0, float(np.iinfo(dt).max)
    return 0.0, 1.0


def pixel_scale(dtype: np.dtype | str) -> float:
    """The value that maps to 1.0 under the dtype range: 65535 for 16-bit images, 255 for 8-bit, 1 for float."""
    return dtype_range(dtype)[1]


def intensity_range(dtype: np.dtype | str, stats: Mapping[str, Any] | None) -> tuple[float, float]:
    """``(low, high)`` that map to 0 and 1 for images of ``dtype``: from ``stats["scale"]["ranges"]`` (written
    by ingest), else the dtype range (manifests from before the intensity choice, or no stats)."""
    scale = (stats or {}).get("scale")
    if not scale:
        return dtype_range(dtype)
    name = np.dtype(dtype).name
    ranges = scale.get("ranges", {})
    if name not in ranges:
        raise DataError(f"image is {name} but image_stats.scale only covers {sorted(ranges)} images (the dataset this "
                        f"model was trained on); convert the image to {' or '.join(sorted(ranges))} first")
    low, high = ranges[name]
    return float(low), float(high)


def _channel_stats(values: Sequence[float], in_channels: int, luma: bool) -> torch.Tensor:
    v = torch.tensor(list(values), dtype=torch.float32)
    if v.numel() == in_channels:
        return v
    if v.numel() == 1:
        return v.repeat(in_channels)
    if v.numel() == 3 and in_channels == 1:
        return (v * torch.tensor(_LUMA)).sum(0, keepdim=True) if luma else v.mean(0, keepdim=True)
    raise DataError(f"normalisation stats have {v.numel()} channels; cannot map them to {in_channels} input channels")


def to_model_input(image: np.ndarray, in_channels: int, stats: Mapping[str, Any] | None) -> torch.Tensor:
    """``H x W x C`` pixels -> normalised float32 ``C x H x W``: scale, match channels, standardise.

    Scaling maps ``low..high`` of :func:`intensity_range` to 0..1 (``image_stats["scale"]``, e.g.
    ``{"intensity": "auto", "ranges": {"uint8": [0, 255], "uint16": [0, 4095]}}``). Gray becomes 3 channels
    by repetition, RGB becomes 1 channel by luminance. ``stats`` is the manifest's ``image_stats``
    (``mean``/``std`` per stored channel in scaled units, plus ``scale``); without ``mean``/``std`` the
    image is only scaled, and None scales by dtype. ``stats["normalize"] == "image"`` (``data.normalize``)
    standardises each channel by the image's own mean/std instead (a constant channel becomes 0).
    """
    arr = image if image.ndim == 3 else image[..., None]
    low, high = intensity_range(arr.dtype, stats)
    pixels = arr.astype(np.float64 if arr.dtype.kind == "f" else np.float32)
    x = torch.from_numpy(((pixels - low) / (high - low)).astype(np.float32, copy=False)).permute(2, 0, 1)
    c = x.shape[0]
    if c == 4:
        x, c = x[:3], 3
    if c != in_channels:
        if c == 1:
            x = x.repeat(in_channels, 1, 1)
        elif c == 3 and in_channels == 1:
            x = (x * torch.tensor(_LUMA).view(3, 1, 1)).sum(0, keepdim=True)
        else:
            raise DataError(f"cannot feed a {c}-channel image to a model with in_channels={in_channels}")
    if stats and stats.get("normalize") == "image":
        flat = x.reshape(x.shape[0], -1).double()
        mean, std = flat.mean(1).view(-1, 1, 1), flat.std(1, correction=0).view(-1, 1, 1)
        x = ((x - mean) / torch.where(std > 1e-6, std, torch.ones_like(std))).float()
    elif stats and "mean" in stats:
        mean = _channel_stats(stats["mean"], in_channels, luma=True).view(-1, 1, 1)
        std = _channel_stats(stats["std"], in_channels, luma=False).view(-1, 1, 1).clamp(min=1e-6)
        x = (x - mean) / std
    return x.contiguous()
