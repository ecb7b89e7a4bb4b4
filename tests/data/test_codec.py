"""Decoding and the one model-input normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unet_dist.data.codec import decode_image, decode_mask, encode_lossless, encode_png, to_model_input
from unet_dist.errors import DataError


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("arr", [
    np.arange(64, dtype=np.uint8).reshape(8, 8),
    (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8),
    np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3),
], ids=["gray8", "gray16", "rgb8"])
def test_encode_png_round_trips_losslessly(arr):
    out = decode_image(encode_png(arr))
    assert out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr.reshape(8, 8, -1))


def test_encode_lossless_keeps_16_bit_rgb():
    rgb16 = np.random.default_rng(2).integers(0, 65536, (7, 5, 3), dtype=np.uint16)
    with pytest.raises(DataError, match="16-bit RGB"):
        encode_png(rgb16)
    out = decode_image(encode_lossless(rgb16))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, rgb16)
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert encode_lossless(gray) == encode_png(gray)


def test_decode_rgba_drops_alpha_and_tiff16_keeps_depth():
    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(_png(rgba)), rgba[..., :3])
    img16 = np.random.default_rng(1).integers(0, 65536, (6, 9), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, img16)
    out = decode_image(buf.getvalue())
    assert out.dtype == np.uint16 and out.shape == (6, 9, 1)
    np.testing.assert_array_equal(out[..., 0], img16)


def test_decode_palette_mask_gives_indices():
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    im = Image.fromarray(idx).convert("P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    np.testing.assert_array_equal(decode_mask(buf.getvalue()), idx)


def test_truncated_png_is_a_data_error():
    data = _png(np.zeros((32, 32), np.uint8) + 7)
    with pytest.raises(DataError, match="cannot decode"):
        decode_image(data[: len(data) // 2])


def test_to_model_input_channels_and_normalisation():
    gray = np.full((4, 5, 1), 51, np.uint8)
    x = to_model_input(gray, 3, {"mean": [0.2], "std": [0.5]})
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.zeros(3, 4, 5))
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 255
    y = to_model_input(rgb, 1, None)
    torch.testing.assert_close(y, torch.full((1, 2, 2), 0.299))
    g16 = np.full((2, 2, 1), 65535, np.uint16)
    torch.testing.assert_close(to_model_input(g16, 1, None), torch.ones(1, 2, 2))


@pytest.mark.parametrize("channels", [1, 3])
def test_per_image_normalisation_ignores_gain_and_offset(channels):
    """``normalize: image``: each channel standardised by the image's own mean/std, so an exposure change (a gain and
    an offset) gives the same input; a constant channel gives zeros, not NaN. The pipeline spec and checkpoints
    carry the choice."""
    from unet_dist.data.pipeline import PipelineSpec

    rng = np.random.default_rng(0)
    dim = rng.integers(200, 2000, (40, 56, channels)).astype(np.uint16)
    bright = (dim.astype(np.int64) * 3 + 5000).astype(np.uint16)
    spec = PipelineSpec(in_channels=channels, num_classes=2, mean=(0.3,) * channels, std=(0.1,) * channels, normalize="image")
    a, b = to_model_input(dim, channels, spec.stats), to_model_input(bright, channels, spec.stats)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a.mean((1, 2)), torch.zeros(channels), atol=1e-5)
    assert torch.allclose(a.std((1, 2), correction=0), torch.ones(channels), atol=1e-4)
    flat = to_model_input(np.full((8, 8, channels), 7, np.uint8), channels, spec.stats)
    assert torch.equal(flat, torch.zeros(channels, 8, 8))
    by_dataset = PipelineSpec(in_channels=channels, num_classes=2, mean=(0.3,) * channels, std=(0.1,) * channels)
    assert "normalize" not in by_dataset.stats and by_dataset.with_stats(spec.stats).normalize == "image"
    assert not torch.allclose(to_model_input(dim, channels, by_dataset.stats), to_model_input(bright, channels, by_dataset.stats))


def test_image_kind_from_the_header_agrees_with_decoding():
    """The split survey reads channels and bit depth from headers; they must be what ingest then decodes."""
    import tifffile

    from unet_dist.data.codec import image_kind

    rng = np.random.default_rng(0)
    samples = {mode: rng.integers(0, 256, shape, dtype=np.uint8) for mode, shape in
               (("L", (8, 8)), ("RGB", (8, 8, 3)), ("RGBA", (8, 8, 4)), ("LA", (8, 8, 2)))}
    files = []
    for mode, arr in samples.items():
        buf = io.BytesIO()
        Image.fromarray(arr, mode=mode).save(buf, format="PNG")
        files.append(buf.getvalue())
    for fmt, im in (("PNG", Image.fromarray(samples["L"]).convert("P")), ("PNG", Image.fromarray(samples["L"]).convert("1")),
                    ("PNG", Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16))),
                    ("JPEG", Image.fromarray(samples["RGB"]))):
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        files.append(buf.getvalue())
    for arr in (rng.integers(0, 65535, (8, 8, 3), dtype=np.uint16), rng.random((8, 8), dtype=np.float32)):
        buf = io.BytesIO()
        tifffile.imwrite(buf, arr)
        files.append(buf.getvalue())
    for data in files:
        image = decode_image(data)
        assert image_kind(data) == (image.shape[-1], image.dtype.itemsize * 8)
