"""Ingest: real ISBI to local and S3, bad data reported together, skip_invalid, interrupted ingest, splits."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tifffile
from PIL import Image

from unet_dist.config import IngestConfig
from unet_dist.data import decode_image, decode_mask, ingest, read_manifest, split_paths
from unet_dist.data.ingest import assign_splits
from unet_dist.data.synthetic import generate, ingest_config
from unet_dist.errors import DataError
from unet_dist.storage import resolve

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _invalid_pair_lists_in_tmp_path(tmp_path, monkeypatch):
    """Ingest writes the full list of invalid pairs to the system temp dir by default: keep it in the test's own."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _rows(manifest: dict) -> dict[str, dict]:
    rows = {}
    for split in ("train", "val", "test"):
        paths, fs = split_paths(manifest, split)
        for p in paths:
            for row in pq.read_table(p, filesystem=fs).to_pylist():
                rows[row["id"]] = row
    return rows


def _check_isbi(manifest: dict, isbi_dir: Path) -> None:
    assert manifest["counts"]["total"] == 30
    assert sum(manifest["counts"][s] for s in ("train", "val", "test")) == 30
    assert manifest["counts"]["val"] >= 1
    assert manifest["skipped"] == []
    rows = _rows(manifest)
    assert len(rows) == 30
    for sid in ("0", "17"):
        original = np.asarray(Image.open(isbi_dir / "images" / f"{sid}.png"))
        original_mask = np.asarray(Image.open(isbi_dir / "masks" / f"{sid}.png"))
        np.testing.assert_array_equal(decode_image(rows[sid]["image"])[..., 0], original)
        np.testing.assert_array_equal(decode_mask(rows[sid]["mask"]), original_mask // 255)
        assert (rows[sid]["height"], rows[sid]["width"], rows[sid]["channels"]) == original.shape + (1,)
    freq = manifest["class_pixel_freq"]
    assert abs(sum(freq.values()) - 1) < 1e-9 and 0 < freq["background"] < 1
    assert 0 < manifest["image_stats"]["std"][0] < 1


def test_ingest_isbi_local(tmp_path, isbi_dir):
    dest = tmp_path / "isbi"
    manifest = ingest(str(isbi_dir), str(dest), IngestConfig(rows_per_shard=16), progress=False)
    again = read_manifest(str(dest))
    assert again["fingerprint"] == manifest["fingerprint"]
    _check_isbi(again, isbi_dir)
    assert len(again["splits"]["train"]["files"]) == 2


@pytest.mark.s3
def test_ingest_isbi_s3(s3_uri, isbi_dir, tmp_path):
    local = ingest(str(isbi_dir), str(tmp_path / "isbi"), IngestConfig(), progress=False)
    manifest = ingest(str(isbi_dir), s3_uri, IngestConfig(), progress=False)
    loaded = read_manifest(s3_uri)
    assert loaded["uri"] == s3_uri
    assert loaded["fingerprint"] == manifest["fingerprint"] == local["fingerprint"]
    assert loaded["counts"] == local["counts"]
    _check_isbi(loaded, isbi_dir)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bad_set(root: Path) -> dict[str, str | None]:
    """Hand-made pairs: id -> expected reason fragment (None: valid)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()

    def put(name: str, image: bytes | None, mask: bytes | None, mask_name: str | None = None) -> None:
        if image is not None:
            (root / "images" / name).write_bytes(image)
        if mask is not None:
            (root / "masks" / (mask_name or Path(name).stem + ".png")).write_bytes(mask)

    gray = lambda h, w: rng.integers(0, 256, (h, w), dtype=np.uint8)  # noqa: E731
    binmask = lambda h, w: (rng.random((h, w)) > 0.5).astype(np.uint8) * 255  # noqa: E731
    for i in range(3):
        put(f"good{i}.png", _png(gray(32, 32)), _png(binmask(32, 32)))
    put("mixed.png", _png(gray(40, 24)), _png(binmask(40, 24)))
    put("rgba.png", _png(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)), _png(binmask(32, 32)))
    inst = np.zeros((32, 32), np.uint16)
    inst[2:10, 2:10], inst[15:30, 12:20] = 300, 1200
    put("inst16.png", _png(gray(32, 32)), _png(inst))
    buf = io.BytesIO()
    tifffile.imwrite(buf, rng.integers(0, 65536, (32, 32), dtype=np.uint16))
    put("tiff16.tif", buf.getvalue(), _png(binmask(32, 32)))
    buf = io.BytesIO()
    tifffile.imwrite(buf, rng.integers(0, 65536, (32, 32, 3), dtype=np.uint16), photometric="rgb")
    put("rgb16.tiff", buf.getvalue(), _png(binmask(32, 32)))
    trunc = _png(gray(32, 32))
    put("truncated.png", trunc[: len(trunc) // 2], _png(binmask(32, 32)))
    put("mismatch.png", _png(gray(32, 32)), _png(binmask(30, 32)))
    put("nomask.png", _png(gray(32, 32)), None)
    put("badmask.png", _png(gray(32, 32)), b"not an image at all", "badmask.png")
    return {"good0": None, "good1": None, "good2": None, "mixed": None, "rgba": None, "inst16": None, "tiff16": None,
            "rgb16": None,
            "truncated": "cannot decode", "mismatch": "size mismatch", "nomask": "mask is missing", "badmask": "mask badmask.png"}


def test_bad_pairs_reported_together_and_nothing_written(tmp_path):
    expected = _bad_set(tmp_path / "src")
    dest = tmp_path / "dest"
    with pytest.raises(DataError) as info:
        ingest(str(tmp_path / "src"), str(dest), IngestConfig(mask_mode="instance"), progress=False)
    problems = {Path(p.file).stem: p.reason for p in info.value.problems}
    bad = {k: v for k, v in expected.items() if v}
    assert set(problems) == set(bad)
    for stem, fragment in bad.items():
        assert fragment in problems[stem], (stem, problems[stem])
        assert stem in str(info.value)
    assert not dest.exists(), "a failed ingest must leave DEST as it was (absent)"
    with pytest.raises(DataError, match="no dataset"):
        read_manifest(str(dest))


@pytest.mark.s3
def test_failed_ingest_to_s3_leaves_no_objects(tmp_path, s3_uri):
    """Valid pairs sort before the first bad one, so shards are written and must be discarded."""
    _bad_set(tmp_path / "src")
    for part in ("images", "masks"):
        (tmp_path / "src" / part / "badmask.png").unlink()
    with pytest.raises(DataError, match="invalid"):
        ingest(str(tmp_path / "src"), s3_uri, IngestConfig(mask_mode="instance", rows_per_shard=1), progress=False)
    bucket, prefix = resolve(s3_uri).path.split("/", 1)
    listed = resolve(s3_uri).fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=prefix + "/")
    assert listed.get("KeyCount", 0) == 0, [o["Key"] for o in listed.get("Contents", [])]


@pytest.mark.s3
def test_cleanup_error_after_commit_keeps_the_new_dataset(tmp_path, s3_uri, monkeypatch):
    """On S3 the new shards are written in place; once dataset.json names them they must never be discarded."""
    from unet_dist.storage import Location

    raw = generate(str(tmp_path / "raw"), n=6, size=24)
    old = ingest(raw, s3_uri, ingest_config("binary", seed=1), progress=False)
    old_version = old["splits"]["train"]["files"][0].split("/")[0]
    real_rm = Location.rm

    def failing_rm(self, recursive=True):
        if self.name == old_version:
            raise OSError("S3 hiccup while removing the previous version")
        real_rm(self, recursive)

    monkeypatch.setattr(Location, "rm", failing_rm)
    with pytest.raises(OSError, match="hiccup"):
        ingest(raw, s3_uri, ingest_config("binary", seed=2), progress=False)
    monkeypatch.undo()
    kept = read_manifest(s3_uri)
    assert kept["split_by"]["seed"] == 2
    assert len(_rows(kept)) == 6


def test_shards_stream_and_splits_survive_fixing_a_bad_file(tmp_path):
    raw = tmp_path / "raw"
    generate(str(raw), n=12, size=24)
    good = (raw / "images" / "synthetic-0005.png").read_bytes()
    (raw / "images" / "synthetic-0005.png").write_bytes(good[: len(good) // 3])
    first = ingest(str(raw), str(tmp_path / "a"), ingest_config("binary", rows_per_shard=2, skip_invalid=True), progress=False)
    rows_a = _rows(first)
    assert "synthetic-0005" not in rows_a and len(rows_a) == 11
    for split in ("train", "val", "test"):
        paths, fs = split_paths(first, split)
        sizes = [pq.read_metadata(p, filesystem=fs).num_rows for p in paths]
        assert all(n <= 2 for n in sizes) and sum(sizes) == first["counts"][split]

    (raw / "images" / "synthetic-0005.png").write_bytes(good)
    fixed = _rows(ingest(str(raw), str(tmp_path / "b"), ingest_config("binary", rows_per_shard=2), progress=False))
    assert len(fixed) == 12
    assert {k: r["split"] for k, r in rows_a.items()} == {k: r["split"] for k, r in fixed.items() if k != "synthetic-0005"}


def test_skip_invalid_writes_exactly_the_valid_pairs(tmp_path):
    expected = _bad_set(tmp_path / "src")
    manifest = ingest(str(tmp_path / "src"), str(tmp_path / "dest"), IngestConfig(mask_mode="instance", skip_invalid=True),
                      progress=False)
    valid = {k for k, v in expected.items() if v is None}
    rows = _rows(read_manifest(str(tmp_path / "dest")))
    assert set(rows) == valid
    assert {Path(s["file"]).stem for s in manifest["skipped"]} == set(expected) - valid
    assert manifest["counts"]["total"] == len(valid)
    src = tmp_path / "src"
    rgba = decode_image(rows["rgba"]["image"])
    np.testing.assert_array_equal(rgba, np.asarray(Image.open(src / "images" / "rgba.png"))[..., :3])
    inst = decode_mask(rows["inst16"]["mask"])
    np.testing.assert_array_equal(inst, (np.asarray(Image.open(src / "masks" / "inst16.png")) > 0).astype(np.int64))
    tif = decode_image(rows["tiff16"]["image"])
    assert tif.dtype == np.uint16 and rows["tiff16"]["bit_depth"] == 16
    np.testing.assert_array_equal(tif[..., 0], tifffile.imread(src / "images" / "tiff16.tif"))
    rgb16 = decode_image(rows["rgb16"]["image"])
    assert rgb16.dtype == np.uint16 and rows["rgb16"]["channels"] == 3
    np.testing.assert_array_equal(rgb16, tifffile.imread(src / "images" / "rgb16.tiff"))
    assert (rows["mixed"]["height"], rows["mixed"]["width"]) == (40, 24)
    assert manifest["channels"] == 3 and manifest["bit_depths"] == [8, 16]


def test_label_values_checked_per_mask_mode(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    img = _png(np.zeros((16, 16), np.uint8))
    for name, values in {"ok": (0, 1, 2), "over": (0, 5), "gray": (0, 128, 255)}.items():
        (src / "images" / f"{name}.png").write_bytes(img)
        (src / "masks" / f"{name}.png").write_bytes(_png(np.resize(np.array(values, np.uint8), (16, 16))))
    with pytest.raises(DataError) as info:
        ingest(str(src), str(tmp_path / "d1"), IngestConfig(mask_mode="multiclass", class_names=["a", "b", "c"]), progress=False)
    reasons = {Path(p.file).stem: p.reason for p in info.value.problems}
    assert set(reasons) == {"over", "gray"}
    assert "labels [5] out of range 0..2" in reasons["over"]
    with pytest.raises(DataError) as info:
        ingest(str(src), str(tmp_path / "d2"), IngestConfig(mask_mode="binary"), progress=False)
    reasons = {Path(p.file).stem: p.reason for p in info.value.problems}
    assert set(reasons) == {"ok", "over", "gray"}
    assert "[0, 128, 255]" in reasons["gray"] and "[0, 1, 2]" in reasons["ok"]


def test_csv_manifest_with_split_column(tmp_path):
    raw = Path(generate(str(tmp_path / "raw"), n=6, size=24))
    lines = ["image,mask,subset"] + [f"images/synthetic-{i:04d}.png,masks/synthetic-{i:04d}.png,{'val' if i < 2 else 'train'}"
                                    for i in range(6)]
    (raw / "list.csv").write_text("\n".join(lines) + "\n")
    manifest = ingest(str(raw / "list.csv"), str(tmp_path / "d"), ingest_config("binary", split_column="subset"), progress=False)
    assert manifest["counts"] == {"train": 4, "val": 2, "test": 0, "total": 6}
    assert sorted(r["id"] for r in _rows(manifest).values() if r["split"] == "val") == ["images_synthetic-0000", "images_synthetic-0001"]


def _mixed_csv(root: Path) -> tuple[Path, dict[str, str]]:
    """A CSV over two synthetic sets (24 px gray, 48 px RGB) whose pairs come in slides of two or three."""
    groups = {}
    lines = ["image,mask,slide"]
    for name, n, size, channels, per in (("gray", 12, 24, 1, 2), ("rgb", 9, 48, 3, 3)):
        generate(str(root / name), n=n, size=size, channels=channels, seed=len(name))
        for i in range(n):
            lines.append(f"{name}/images/synthetic-{i:04d}.png,{name}/masks/synthetic-{i:04d}.png,{name}{i // per}")
            groups[f"{name}_images_synthetic-{i:04d}"] = f"{name}{i // per}"
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    return root / "list.csv", groups


def test_grouped_k_fold_ingest_shards_by_fold_and_records_strata(tmp_path):
    from rich.console import Console

    from unet_dist.data.ingest import summary_table

    csv, groups = _mixed_csv(tmp_path / "raw")
    manifest = ingest(str(csv), str(tmp_path / "d"), ingest_config("binary", group_column="slide", folds=3), progress=False)
    folds = manifest["folds"]
    assert folds["k"] == 3 and manifest["splits"]["val"]["files"] == folds["files"][0]
    assert manifest["splits"]["train"]["files"] == folds["files"][1] + folds["files"][2]
    bucket = {}
    for k, files in enumerate(folds["files"]):
        for f in files:
            for row in pq.read_table(str(tmp_path / "d" / f)).to_pylist():
                bucket[row["id"]] = f"fold-{k}"
                assert row["split"] == ("val" if k == 0 else "train")
    assert [sum(1 for b in bucket.values() if b == f"fold-{k}") for k in range(3)] == folds["counts"]
    bucket.update({i: "test" for i, r in _rows(manifest).items() if r["split"] == "test"})
    assert set(bucket) == set(groups) and manifest["counts"]["test"] >= 1
    assert all(len({bucket[i] for i in groups if groups[i] == g}) == 1 for g in set(groups.values()))
    strata = manifest["strata"]
    assert any(s.startswith("16-31px 1ch") for s in strata) and any(s.startswith("32-63px 3ch") for s in strata)
    assert {sp: sum(row[sp] for row in strata.values()) for sp in ("train", "val", "test")} == {
        sp: manifest["counts"][sp] for sp in ("train", "val", "test")}
    assert manifest["groups"]["count"] == 6 + 3
    console = Console(record=True, width=120)
    console.print(summary_table(manifest))
    text = console.export_text()
    assert "folds" in text and "(fold 0 is val)" in text and "9 by column 'slide'" in text and "32-63px 3ch" in text


@pytest.mark.parametrize("n", [1, 2, 3, 10, 30])
@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.5, 0.5, 0.0), (0.98, 0.01, 0.01)])
def test_assign_splits_deterministic_with_val(n, ratios):
    ids = [f"x{i}" for i in range(n)]
    a, b = assign_splits(ids, ratios, seed=7), assign_splits(list(reversed(ids)), ratios, seed=7)
    assert set(a) == set(ids)
    assert a == assign_splits(ids, ratios, seed=7)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts["train"] >= 1
    if n >= 2:
        assert counts["val"] >= 1
    assert sum(counts.values()) == n
    assert sorted(a.values()) == sorted(b.values())


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import pyarrow.parquet as pq
    from unet_dist.data import ingest
    from unet_dist.data.synthetic import ingest_config
    real = pq.write_table
    def slow(*a, **k):
        real(*a, **k)
        print("SHARD", flush=True)
        time.sleep(120)
    pq.write_table = slow
    ingest(sys.argv[1], sys.argv[2], ingest_config("binary", rows_per_shard=2), progress=False)
""")


def _ingest_killed_after_first_shard(src: str, dest: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, src, dest], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "SHARD", line
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_killed_ingest_leaves_no_dataset_and_keeps_the_old_one(tmp_path):
    raw = generate(str(tmp_path / "raw"), n=6, size=24)
    fresh = tmp_path / "fresh"
    _ingest_killed_after_first_shard(raw, str(fresh))
    assert list(fresh.glob(".tmp-*/*/part-*.parquet")), "the first shard should have been written"
    with pytest.raises(DataError, match="no complete dataset.*re-run"):
        read_manifest(str(fresh))

    existing = tmp_path / "existing"
    old = ingest(str(tmp_path / "raw"), str(existing), ingest_config("binary", seed=1), progress=False)
    _ingest_killed_after_first_shard(raw, str(existing))
    kept = read_manifest(str(existing))
    assert kept["fingerprint"] == old["fingerprint"] and kept["split_by"]["seed"] == 1
    assert len(_rows(kept)) == 6

    new = ingest(raw, str(existing), ingest_config("binary", seed=2), progress=False)
    assert read_manifest(str(existing))["split_by"]["seed"] == 2
    assert sorted(p.name for p in existing.iterdir()) == sorted(["dataset.json", new["splits"]["train"]["files"][0].split("/")[0]])


def _instance_set(root: Path, n: int) -> None:
    """``n`` pairs whose masks are instance masks (ids 0..3), i.e. all invalid as binary masks."""
    rng = np.random.default_rng(5)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        (root / "images" / f"cell-{i:03d}.png").write_bytes(_png(rng.integers(0, 256, (16, 16), dtype=np.uint8)))
        (root / "masks" / f"cell-{i:03d}.png").write_bytes(_png(rng.integers(0, 4, (16, 16), dtype=np.uint8)))


def test_systematic_problem_is_grouped_by_kind_with_full_list_in_a_file(tmp_path):
    import json

    from rich.console import Console

    from unet_dist.data import ProblemKind

    _instance_set(tmp_path / "src", 50)
    (tmp_path / "src" / "images" / "lonely.png").write_bytes(_png(np.zeros((16, 16), np.uint8)))
    listing, dest = tmp_path / "report" / "invalid.jsonl", tmp_path / "dest"
    err_out = io.StringIO()
    with pytest.raises(DataError) as info:
        ingest(str(tmp_path / "src"), str(dest), IngestConfig(mask_mode="binary", problems_file=str(listing)),
               console=Console(file=err_out, width=100))
    lines = [ln for ln in err_out.getvalue().splitlines() if re.match(r"  [\w /]+: \d+ \(", ln)]
    assert len(lines) == 2, err_out.getvalue()
    assert lines[0].startswith("  bad mask values: 50 (cell-000.png, cell-001.png, cell-002.png, ...)")
    assert lines[1].startswith("  missing mask: 1 (lonely.png)")
    rows = [json.loads(ln) for ln in listing.read_text().splitlines()]
    assert len(rows) == 51 and sum(r["kind"] == "BAD_MASK_VALUES" for r in rows) == 50
    assert {p.kind for p in info.value.problems} == {ProblemKind.BAD_MASK_VALUES, ProblemKind.MISSING_MASK}
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert "bad mask values x50" in message and str(listing) in message and "--skip-invalid" in message
    assert not dest.exists()


def test_problem_kinds_not_message_text_drive_the_count(tmp_path):
    """A mask without an image counts towards the total by kind; skipped entries record their kind."""
    raw = Path(generate(str(tmp_path / "raw"), n=4, size=24))
    (raw / "images" / "synthetic-0001.png").unlink()
    manifest = ingest(str(raw), str(tmp_path / "d"), ingest_config("binary", skip_invalid=True), progress=False)
    assert [s["kind"] for s in manifest["skipped"]] == ["MISSING_IMAGE"]
    assert manifest["counts"]["total"] == 3


def test_raw_folder_given_as_dataset_suggests_a_separate_destination(tmp_path):
    raw = generate(str(tmp_path / "raw"), n=2, size=16)
    with pytest.raises(DataError, match=r"unet-dist ingest \S+/raw \S+/raw-dataset`"):
        read_manifest(raw)
