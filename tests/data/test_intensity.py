"""Intensity scaling: microscopy images (12-bit in 16-bit PNG, 16-bit TIFF, float32 TIFF) reach the model with
unit variance, round-trip bit-exactly, and 8-bit data keep exactly the old normalisation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
import torch

from unet_dist.config import IngestConfig
from unet_dist.data import decode_image, ingest, split_paths, to_model_input
from unet_dist.data.codec import encode_lossless
from unet_dist.data.synthetic import MICROSCOPY_FORMATS, generate, generate_microscopy, ingest_config
from unet_dist.errors import DataError


def _rows(manifest: dict, split: str = "train") -> list[dict]:
    paths, fs = split_paths(manifest, split)
    return [r for p in paths for r in pq.read_table(p, filesystem=fs).to_pylist()]


def _source(raw: Path, row: dict) -> np.ndarray:
    return decode_image(Path(row["source"]).read_bytes())


@pytest.mark.parametrize("fmt", MICROSCOPY_FORMATS)
def test_microscopy_sets_ingest_round_trip_and_standardise(tmp_path, fmt):
    raw = Path(generate_microscopy(str(tmp_path / "raw"), fmt, n=16, size=64))
    manifest = ingest(str(raw), str(tmp_path / "ds"), ingest_config("binary"), progress=False)
    stats = manifest["image_stats"]
    assert manifest["counts"]["total"] == 16 and stats["scale"]["intensity"] == "auto"
    rows = _rows(manifest)
    x = torch.cat([to_model_input(decode_image(r["image"]), 1, stats).flatten() for r in rows])
    assert abs(float(x.mean())) < 0.05 and 0.95 < float(x.std()) < 1.05
    scaled = torch.cat([to_model_input(decode_image(r["image"]), 1, {"scale": stats["scale"]}).flatten() for r in rows])
    assert 0.05 < float(scaled.std()) < 0.5, "scaled to the data's range, not to the dtype's (nearly flat)"
    for r in rows:
        stored, original = decode_image(r["image"]), _source(raw, r)
        assert stored.dtype == original.dtype and r["bit_depth"] == stored.dtype.itemsize * 8
        np.testing.assert_array_equal(stored, original)


def test_auto_scale_uses_observed_bit_depth(tmp_path):
    raw = generate_microscopy(str(tmp_path / "raw"), "png12", n=6, size=32)
    stats = ingest(raw, str(tmp_path / "ds"), ingest_config("binary"), progress=False)["image_stats"]
    assert stats["scale"]["ranges"] == {"uint16": [0.0, 4095.0]}


@pytest.mark.parametrize("mode", ["dtype", "dataset_range", "percentile"])
def test_other_intensity_modes_are_recorded_and_standardise(tmp_path, mode):
    raw = generate_microscopy(str(tmp_path / "raw"), "tiff16", n=8, size=32)
    manifest = ingest(raw, str(tmp_path / "ds"), ingest_config("binary", intensity=mode), progress=False)
    stats = manifest["image_stats"]
    low, high = stats["scale"]["ranges"]["uint16"]
    assert stats["scale"]["intensity"] == mode
    if mode == "dtype":
        assert (low, high) == (0.0, 65535.0)
    else:
        assert 90 <= low < high <= 3200
    x = torch.cat([to_model_input(decode_image(r["image"]), 1, stats).flatten() for r in _rows(manifest)])
    assert 0.95 < float(x.std()) < 1.05


def test_8_bit_normalisation_is_unchanged(tmp_path):
    raw = generate(str(tmp_path / "raw"), n=6, size=24)
    manifest = ingest(raw, str(tmp_path / "ds"), ingest_config("binary"), progress=False)
    stats = manifest["image_stats"]
    assert stats["scale"]["ranges"] == {"uint8": [0.0, 255.0]}
    image = decode_image(_rows(manifest)[0]["image"])
    old = (torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1) - stats["mean"][0]) / stats["std"][0]
    assert torch.equal(to_model_input(image, 1, stats), old)
    assert torch.equal(to_model_input(image, 1, {"mean": stats["mean"], "std": stats["std"]}), old), "old manifests"


def test_float_round_trip_is_bit_exact_and_non_finite_is_refused(tmp_path):
    img = np.random.default_rng(0).normal(100, 30, (9, 7, 1)).astype(np.float32)
    np.testing.assert_array_equal(decode_image(encode_lossless(img)), img)
    rgb = np.random.default_rng(1).random((5, 4, 3))
    out = decode_image(encode_lossless(rgb))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, rgb)
    bad = img.copy()
    bad[0, 0, 0], bad[1, 1, 0] = np.nan, np.inf
    buf = io.BytesIO()
    tifffile.imwrite(buf, bad[..., 0])
    with pytest.raises(DataError, match="2 NaN or infinite pixels"):
        decode_image(buf.getvalue())


def test_image_of_a_dtype_the_model_never_saw_is_refused():
    stats = {"mean": [0.5], "std": [0.2], "scale": {"intensity": "auto", "ranges": {"uint16": [0.0, 4095.0]}}}
    with pytest.raises(DataError, match="float32.*uint16"):
        to_model_input(np.zeros((2, 2, 1), np.float32), 1, stats)


def test_percentile_bounds_are_validated():
    from unet_dist.config import validate_section
    from unet_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="ingest.percentile_low"):
        validate_section(IngestConfig, {"intensity": "percentile", "percentile_low": 99, "percentile_high": 1}, "ingest")
