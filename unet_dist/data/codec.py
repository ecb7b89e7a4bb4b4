"""Decoding, lossless encoding and the one model-input normalisation.

Images are ``H x W x C`` numpy arrays (uint8 or uint16, C in {1, 3}); masks are ``H x W`` integer arrays.
:func:`to_model_input` is the single place where pixels become a normalised float tensor, shared by
training, validation and ``predict`` on new images.
"""

from __future__ import annotations

import io
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

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
        raise DataError(f"cannot decode image ({type(err).__name__}: {err})") from None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise DataError(f"unsupported array shape {arr.shape}: expected H x W or H x W x C")
    return arr


def decode_image(source: bytes | str | os.PathLike[str]) -> np.ndarray:
    """An image as ``H x W x C`` (C = 1 or 3; RGBA drops alpha, palette expands to RGB), uint8 or uint16."""
    data = _read(source)
    if not _is_tiff(data):
        with Image.open(io.BytesIO(data)) as im:
            if im.mode == "P":
                return np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))[..., :3].copy()
    arr = decode_array(data)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.shape[-1] == 2:
        arr = arr[..., :1]
    elif arr.shape[-1] not in (1, 3):
        raise DataError(f"image has {arr.shape[-1]} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype not in (np.uint8, np.uint16):
        if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)
        else:
            raise DataError(f"image dtype {arr.dtype} is not supported; use 8- or 16-bit unsigned integers")
    return np.ascontiguousarray(arr)


def decode_mask(source: bytes | str | os.PathLike[str]) -> np.ndarray:
    """A label mask as ``H x W`` (palette PNGs give their indices); multi-channel masks must be gray-equal."""
    arr = decode_array(source)
    if arr.ndim == 3:
        if arr.shape[-1] == 1 or all(np.array_equal(arr[..., 0], arr[..., c]) for c in range(1, min(arr.shape[-1], 3))):
            arr = arr[..., 0]
        else:
            raise DataError(f"mask has {arr.shape[-1]} differing channels; save masks as single-channel label ids or a palette PNG")
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        if not np.all(np.mod(arr, 1) == 0):
            raise DataError(f"mask holds non-integer values (dtype {arr.dtype}); masks must hold integer labels")
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
    """PNG where PNG holds the pixels exactly; zlib TIFF for 16-bit RGB (which Pillow cannot write as PNG).

    Readers need not care which: :func:`decode_image` sniffs the format.
    """
    if arr.dtype == np.uint16 and arr.ndim == 3 and arr.shape[-1] > 1:
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, np.ascontiguousarray(arr), compression="zlib", photometric="rgb")
        return buf.getvalue()
    return encode_png(arr)


def pixel_scale(dtype: np.dtype | str) -> float:
    """The value that maps to 1.0: 65535 for 16-bit images, 255 otherwise."""
    return 65535.0 if np.dtype(dtype) == np.uint16 else 255.0


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
    """``H x W x C`` pixels -> normalised float32 ``C x H x W``: scale to [0, 1], match channels, standardise.

    Gray becomes 3 channels by repetition, RGB becomes 1 channel by luminance. ``stats`` is the
    manifest's ``image_stats`` (``mean``/``std`` per stored channel, in [0, 1] units); None skips it.
    """
    arr = image if image.ndim == 3 else image[..., None]
    x = torch.from_numpy(arr.astype(np.float32) / pixel_scale(arr.dtype)).permute(2, 0, 1)
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
    if stats:
        mean = _channel_stats(stats["mean"], in_channels, luma=True).view(-1, 1, 1)
        std = _channel_stats(stats["std"], in_channels, luma=False).view(-1, 1, 1).clamp(min=1e-6)
        x = (x - mean) / std
    return x.contiguous()
