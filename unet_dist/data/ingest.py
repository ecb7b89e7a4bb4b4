"""Ingest: a folder/bucket (or CSV manifest) of images and masks -> validated, sharded Parquet + ``dataset.json``.

Layout at DEST::

    dataset.json                         # written LAST: a dataset exists only if this file does
    data-<id>/{train,val,test}/part-NNNN.parquet
    data-<id>/{fold-0..fold-K-1,test}/part-NNNN.parquet   # with ingest.folds K: fold 0 is val, the others train

Pairs are validated in id order and streamed into shards as they fill (memory is bounded by the shard size),
under ``DEST/.tmp-<id>/`` (renamed to ``DEST/data-<id>/``; on S3 written there directly), and the manifest is
committed last, so an interrupted ingest leaves nothing that loads, and re-ingesting replaces the previous
dataset only at the moment the new manifest lands.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
import posixpath
import time
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from unet_dist.config import IngestConfig, StorageConfig
from unet_dist.data.codec import IMAGE_SUFFIXES, decode_image, decode_mask, encode_lossless, encode_png, image_kind
from unet_dist.data.intensity import PixelSummary, image_stats, summarise
from unet_dist.data.manifest import (  # noqa: F401  (dataset_exists, read_manifest, split_paths: re-exported for callers)
    MANIFEST, PARQUET_SCHEMA, SCHEMA_VERSION, SPLITS, dataset_exists, read_manifest, split_paths,
)
from unet_dist.data.problems import PairError, Problem, ProblemKind, count, problems_error, summary_lines, write_list
from unet_dist.data.splits import Plan, Traits, counts_by_stratum, plan, strata
from unet_dist.errors import ConfigError, DataError
from unet_dist.storage import Location, check_writable, resolve

T = TypeVar("T")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass(frozen=True)
class Pair:
    """One image/mask candidate found in SRC."""

    id: str
    image: str | None
    mask: str | None
    split: str | None = None
    group: str | None = None


@dataclass
class Record:
    """A validated pair, re-encoded and summarised."""

    pair: Pair
    image_bytes: bytes
    mask_bytes: bytes
    height: int
    width: int
    channels: int
    bit_depth: int
    digest: str
    class_counts: np.ndarray
    pixels: PixelSummary
    split: str = ""


@dataclass
class _Scan:
    pairs: list[Pair] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _stem(name: str) -> str:
    return posixpath.splitext(posixpath.basename(name))[0]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _scan_folder(src: Location) -> _Scan:
    images_dir, masks_dir = src.join("images"), src.join("masks")
    if not images_dir.isdir():
        raise DataError(f"{src.uri} has no images/ folder: expected {src.uri}/images and {src.uri}/masks paired by file stem, or a CSV manifest")
    scan = _Scan()
    images = _by_stem(images_dir, scan)
    masks = _by_stem(masks_dir, scan) if masks_dir.isdir() else {}
    for stem in sorted(set(images) | set(masks)):
        img, msk = images.get(stem), masks.get(stem)
        if img is None:
            scan.problems.append(Problem(msk or stem, "mask has no image (no images/<stem>.* with the same stem)", ProblemKind.MISSING_IMAGE))
        elif msk is None:
            scan.problems.append(Problem(img, f"mask is missing (expected masks/{stem}.png or another image format)", ProblemKind.MISSING_MASK))
        else:
            scan.pairs.append(Pair(stem, img, msk))
    return scan


def _by_stem(folder: Location, scan: _Scan) -> dict[str, str]:
    out: dict[str, str] = {}
    for child in folder.ls():
        if not _is_image(child.name):
            continue
        stem = _stem(child.name)
        if stem in out:
            scan.problems.append(Problem(child.uri, f"duplicate stem {stem!r} (also {posixpath.basename(out[stem])}); keep one file per stem",
                                          ProblemKind.DUPLICATE))
            continue
        out[stem] = child.uri
    return out


def _scan_csv(src: Location, cfg: IngestConfig) -> _Scan:
    text = src.read_text()
    reader = csv.DictReader(io.StringIO(text))
    cols = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in ("image", "mask") if c not in cols]
    if missing:
        raise DataError(f"{src.uri}: CSV manifest needs columns image,mask (found {cols}); missing {missing}")
    for key, column in (("split_column", cfg.split_column), ("group_column", cfg.group_column)):
        if column and column not in cols:
            raise ConfigError(f"ingest.{key}: column {column!r} not in {src.uri} (columns: {cols})")
    base = posixpath.dirname(src.uri) if src.is_s3 else os.path.dirname(src.path)
    scan = _Scan()
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
        where = f"{src.uri}:{lineno}"
        img, msk = row.get("image", ""), row.get("mask", "")
        if not img:
            scan.problems.append(Problem(where, "empty image path", ProblemKind.BAD_ROW))
            continue
        image_uri, mask_uri = _abs(base, img, src.is_s3), _abs(base, msk, src.is_s3) if msk else None
        rel = posixpath.splitext(img)[0].lstrip("./").replace("/", "_") if "://" not in img else _stem(img)
        if rel in seen:
            scan.problems.append(Problem(where, f"duplicate image id {rel!r} (also line {seen[rel]})", ProblemKind.DUPLICATE))
            continue
        seen[rel] = lineno
        split = None
        if cfg.split_column:
            value = row.get(cfg.split_column, "").lower()
            split = _SPLIT_ALIASES.get(value)
            if split is None:
                scan.problems.append(Problem(image_uri, f"split {value!r} in column {cfg.split_column!r} ({where}) is not train/val/test",
                                              ProblemKind.BAD_ROW))
                continue
        if mask_uri is None:
            scan.problems.append(Problem(image_uri, f"mask is missing (empty mask column at {where})", ProblemKind.MISSING_MASK))
            continue
        scan.pairs.append(Pair(rel, image_uri, mask_uri, split, row.get(cfg.group_column, "") if cfg.group_column else None))
    return scan


def _abs(base: str, path: str, s3: bool) -> str:
    if "://" in path or path.startswith("/"):
        return path
    return f"{base.rstrip('/')}/{path}" if s3 else os.path.normpath(os.path.join(base, path))


def discover(src: str, cfg: IngestConfig, storage: StorageConfig | None = None) -> tuple[list[Pair], list[Problem]]:
    """Candidate pairs in SRC (folder with images/ + masks/, or a CSV manifest) and the pairing problems found."""
    loc = resolve(src, storage)
    if loc.path.lower().endswith(".csv"):
        if not loc.exists():
            raise DataError(f"CSV manifest {loc.uri} not found")
        scan = _scan_csv(loc, cfg)
    else:
        if not loc.exists():
            raise DataError(f"source {loc.uri} not found: pass a folder/prefix with images/ and masks/, or a CSV manifest")
        if cfg.group_column:
            raise ConfigError(f"ingest.group_column: groups are read from a CSV manifest column; {loc.uri} is a folder")
        scan = _scan_folder(loc)
    return scan.pairs, scan.problems


def labels_from_mask(mask: np.ndarray, cfg: IngestConfig) -> np.ndarray:
    """Class ids (0..C-1) from a raw mask, per ``cfg.mask_mode``; raises PairError naming the offending values."""
    bad = ProblemKind.BAD_MASK_VALUES
    if cfg.mask_mode == "instance":
        if mask.min() < 0:
            raise PairError(bad, f"instance mask has negative ids {sorted(int(v) for v in np.unique(mask[mask < 0])[:5])}")
        return (mask > 0).astype(np.uint8)
    values = np.unique(mask)
    if cfg.mask_mode == "binary":
        vals = set(int(v) for v in values)
        if vals <= {0, 1}:
            return mask.astype(np.uint8)
        if vals <= {0, 255}:
            return (mask // 255).astype(np.uint8)
        shown = sorted(vals)[:10]
        raise PairError(bad, f"binary mask values {shown}{'...' if len(vals) > 10 else ''} are not 0/1 or 0/255; "
                        "use mask_mode multiclass (class ids) or instance (id > 0 is foreground)")
    n = len(cfg.class_names)
    out = values[(values < 0) | (values >= n)]
    if out.size:
        hint = "; it looks like a 0/255 binary mask: use --mask-mode binary" if set(int(v) for v in values) <= {0, 255} else ""
        raise PairError(bad, f"labels {[int(v) for v in out[:10]]} out of range 0..{n - 1} for {n} classes (ingest.class_names){hint}")
    return mask.astype(np.uint8 if n <= 256 else np.uint16)


def _read(uri: str, storage: StorageConfig | None, what: str) -> bytes:
    try:
        return resolve(uri, storage).read_bytes()
    except Exception as err:
        raise PairError(ProblemKind.UNREADABLE, f"cannot read {what} ({err})") from None


def _decoded(data: bytes, decode: Any, prefix: str) -> np.ndarray:
    try:
        return decode(data)
    except PairError as err:
        raise err.prefixed(prefix) from None


def _load(pair: Pair, cfg: IngestConfig, storage: StorageConfig | None, num_classes: int) -> Record:
    """Read, decode, check and summarise one pair; raises PairError (with its ProblemKind)."""
    assert pair.image is not None and pair.mask is not None
    mask_name = posixpath.basename(pair.mask)
    image = _decoded(_read(pair.image, storage, "image"), decode_image, "image")
    mask_raw = _decoded(_read(pair.mask, storage, f"mask {pair.mask}"), decode_mask, f"mask {mask_name}")
    h, w, c = image.shape
    if mask_raw.shape != (h, w):
        raise PairError(ProblemKind.SIZE_MISMATCH,
                        f"size mismatch: image is {h}x{w} but mask {mask_name} is {mask_raw.shape[0]}x{mask_raw.shape[1]}")
    labels = _decoded(mask_raw, lambda m: labels_from_mask(m, cfg), f"mask {mask_name}")
    counts = np.bincount(labels.reshape(-1).astype(np.int64), minlength=num_classes)[:num_classes]
    digest = hashlib.sha256()
    for part in (pair.id.encode(), str(image.shape).encode(), str(image.dtype).encode(), image.tobytes(), labels.tobytes()):
        digest.update(part)
    return Record(
        pair=pair, image_bytes=encode_lossless(image), mask_bytes=encode_png(labels), height=h, width=w, channels=c,
        bit_depth=image.dtype.itemsize * 8, digest=digest.hexdigest(), class_counts=counts,
        pixels=summarise(image, keep_sample=cfg.intensity == "percentile"),
    )


def assign_splits(ids: list[str], ratios: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Deterministic id -> split from seed and ratios, unstratified; at least one val item when n >= 2 and the val
    ratio > 0 (see :mod:`unet_dist.data.splits`)."""
    return plan(ids, ratios, seed).split


def _traits(pair: Pair, cfg: IngestConfig, storage: StorageConfig | None) -> Traits | None:
    """A pair's stratum traits from its mask and its image's header; None when either is unreadable (validation
    says why later)."""
    assert pair.image is not None and pair.mask is not None
    try:
        labels = labels_from_mask(decode_mask(_read(pair.mask, storage, "mask")), cfg)
        channels, bits = image_kind(_read(pair.image, storage, "image"))
    except (PairError, DataError):
        return None
    return Traits(labels.shape[0], labels.shape[1], channels, bits, float(np.count_nonzero(labels)) / labels.size)


def _plan(pairs: list[Pair], cfg: IngestConfig, storage: StorageConfig | None, console: Console, show: bool) -> Plan:
    """Every pair's split and fold, from the split column or the ratios, stratified by traits surveyed first."""
    stratum_of = None
    if cfg.stratify:
        traits: dict[str, Traits | None] = {}
        with _progress(console, show) as bar:
            task = bar.add_task("survey", total=len(pairs), rate="")
            for pair, found in _mapped(pairs, lambda p: _traits(p, cfg, storage)):
                traits[pair.id] = found
                bar.update(task, advance=1)
        stratum_of = strata(traits)
    fixed = {p.id: p.split or "train" for p in pairs} if cfg.split_column else None
    groups = {p.id: p.group for p in pairs if p.group}
    return plan([p.id for p in pairs], cfg.split, cfg.seed, stratum_of, groups, cfg.folds, fixed)


def _class_names(cfg: IngestConfig) -> list[str]:
    names = list(cfg.class_names)
    if cfg.mask_mode in ("binary", "instance") and len(names) != 2:
        raise ConfigError(f"ingest.class_names: mask_mode {cfg.mask_mode} needs exactly 2 class names (background, foreground), got {names}")
    if len(names) < 2:
        raise ConfigError(f"ingest.class_names: need at least 2 classes, got {names}")
    return names


def _progress(console: Console, enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console, disable=not enabled, transient=False,
    )


def _rate(done: int, nbytes: int, start: float, unit: str) -> str:
    dt = max(time.perf_counter() - start, 1e-9)
    return f"{done / dt:6.1f} {unit}/s  {nbytes / dt / 2**20:6.1f} MiB/s"


def report_problems(problems: list[Problem], src: str, cfg: IngestConfig, console: Console, show: bool) -> Path:
    """Write the full list of invalid pairs to a local file and, when ``show``, print one line per kind."""
    listing = write_list(problems, cfg.problems_file)
    if show:
        console.print(f"{len(problems)} invalid pair(s) in {src}; full list: {listing}", highlight=False, soft_wrap=True)
        for line in summary_lines(problems):
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
    return listing


def _prepare_dest(dest: Location) -> None:
    """Refuse a non-empty DEST that is not a dataset, so ingest never mixes with or deletes unrelated files."""
    if not dest.exists():
        return
    if not dest.isdir():
        raise DataError(f"destination {dest.uri} is a file; pass a folder or prefix for the dataset")
    if dest.join(MANIFEST).exists():
        return
    foreign = [c.name for c in dest.ls() if not (c.name.startswith(".tmp-") or c.name.startswith("data-"))]
    if foreign:
        raise DataError(f"destination {dest.uri} is not empty and holds no dataset ({', '.join(foreign[:5])}); choose a new or empty folder")


class _ShardWriter:
    """Buffers validated records per split and writes a Parquet shard whenever one fills, then drops the pixel
    bytes, so ingest memory is bounded by ``rows_per_shard`` records per split rather than the whole set."""

    def __init__(self, staging: Location, rows_per_shard: int) -> None:
        self.staging, self.rows_per_shard = staging, rows_per_shard
        self.buffers: dict[str, list[Record]] = {}
        self.files: dict[str, list[str]] = {}

    @property
    def shards(self) -> int:
        return sum(len(f) for f in self.files.values())

    def add(self, rec: Record, bucket: str) -> None:
        """Buffer ``rec`` for the shard folder ``bucket`` (its split, or its fold)."""
        buf = self.buffers.setdefault(bucket, [])
        buf.append(rec)
        if len(buf) >= self.rows_per_shard:
            self._flush(bucket)

    def close(self) -> dict[str, list[str]]:
        for bucket in list(self.buffers):
            self._flush(bucket)
        return self.files

    def _flush(self, bucket: str) -> None:
        rows, self.buffers[bucket] = self.buffers[bucket], []
        if not rows:
            return
        files = self.files.setdefault(bucket, [])
        name = f"{bucket}/part-{len(files):04d}.parquet"
        table = pa.table({
            "id": [r.pair.id for r in rows],
            "image": [r.image_bytes for r in rows],
            "mask": [r.mask_bytes for r in rows],
            "height": [r.height for r in rows],
            "width": [r.width for r in rows],
            "channels": [r.channels for r in rows],
            "bit_depth": [r.bit_depth for r in rows],
            "source": [r.pair.image for r in rows],
            "mask_source": [r.pair.mask for r in rows],
            "split": [r.split for r in rows],
        }, schema=PARQUET_SCHEMA)
        self.staging.join(bucket).mkdir()
        pq.write_table(table, self.staging.join(name).path, filesystem=self.staging.arrow, compression="none")
        files.append(name)
        for r in rows:
            r.image_bytes = r.mask_bytes = b""


def _mapped(pairs: list[Pair], fn: Callable[[Pair], T]) -> Iterator[tuple[Pair, T]]:
    """``(pair, fn(pair))`` in ``pairs`` order, working on a bounded window in parallel threads."""
    workers = min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        todo = iter(pairs)
        pending: deque[tuple[Pair, Future[T]]] = deque((p, pool.submit(fn, p)) for p in itertools.islice(todo, 4 * workers))
        while pending:
            pair, fut = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(fn, nxt)))
            yield pair, fut.result()


def _validated(pairs: list[Pair], cfg: IngestConfig, storage: StorageConfig | None,
               num_classes: int) -> Iterator[tuple[Pair, Record | PairError]]:
    """Each pair's Record (or its PairError) in ``pairs`` order."""
    def attempt(pair: Pair) -> Record | PairError:
        try:
            return _load(pair, cfg, storage, num_classes)
        except PairError as err:
            return err

    return _mapped(pairs, attempt)


def ingest(
    src: str,
    dest: str,
    cfg: IngestConfig,
    storage: StorageConfig | None = None,
    progress: bool = True,
    console: Console | None = None,
    results: Console | None = None,
) -> dict[str, Any]:
    """Validate every pair in SRC, shard valid ones to Parquet at DEST, commit ``dataset.json`` last; returns the manifest.

    Pairs are validated in id order and streamed into shards under a staging prefix, so memory stays bounded.
    All invalid pairs are reported together, grouped by :class:`ProblemKind` (full list in a local JSON-lines
    file, never in DEST): a DataError (with ``.problems``) unless ``cfg.skip_invalid``, in which case they are
    listed under ``skipped`` in the manifest. On any failure the staging prefix is removed and DEST is left as
    it was. ``progress`` shows the bar and diagnostics on ``console`` (stderr) and the final summary table on
    ``results`` (stdout).

    Splits are drawn from all discovered pair ids (or the manifest's split column) before validation, so
    fixing or dropping one bad file never moves other images between splits.
    """
    console = console or Console(stderr=True)
    names = _class_names(cfg)
    num_classes = len(names)
    src_loc, dest_loc = resolve(src, storage), resolve(dest, storage)
    pairs, problems = discover(src, cfg, storage)
    if not pairs and not problems:
        raise DataError(f"no images found in {src_loc.uri}: expected images/ and masks/ with .png/.jpg/.tif files, or a CSV manifest")
    _prepare_dest(dest_loc)
    pairs = sorted(pairs, key=lambda p: p.id)
    placed = _plan(pairs, cfg, storage, console, progress)

    created = not dest_loc.exists()
    check_writable(dest_loc) if dest_loc.is_s3 else dest_loc.mkdir()
    token = uuid.uuid4().hex[:12]
    version = f"data-{token}"
    staging = dest_loc.join(version if dest_loc.is_s3 else f".tmp-{token}")
    records: list[Record] = []
    try:
        writer = _ShardWriter(staging, cfg.rows_per_shard)
        with _progress(console, progress) as bar:
            task = bar.add_task("ingest", total=len(pairs), rate="")
            start, nbytes, n_bad = time.perf_counter(), 0, len(problems)
            for pair, result in _validated(pairs, cfg, storage, num_classes):
                if isinstance(result, PairError):
                    problems.append(Problem(pair.image or pair.id, str(result), result.kind))
                else:
                    result.split = placed.split[pair.id]
                    records.append(result)
                    nbytes += len(result.image_bytes) + len(result.mask_bytes)
                    if cfg.skip_invalid or len(problems) == n_bad:
                        writer.add(result, placed.bucket(pair.id))
                    else:
                        result.image_bytes = result.mask_bytes = b""
                bar.update(task, advance=1, rate=_rate(len(records) + len(problems) - n_bad, nbytes, start, "pairs")
                           + f"  {writer.shards} shards")
        problems.sort(key=lambda p: p.file)
        total = len(pairs) + count(problems, ProblemKind.MISSING_IMAGE)
        listing = report_problems(problems, src_loc.uri, cfg, console, progress) if problems else None
        if listing and not cfg.skip_invalid:
            raise problems_error(problems, src_loc.uri, total, listing)
        if not records:
            raise DataError(f"no valid pairs in {src_loc.uri} ({len(problems)} invalid); nothing to write")
        files = writer.close()
        manifest = _manifest(records, problems, files, names, cfg, src_loc, version, placed)
    except BaseException:
        _discard(dest_loc, staging, created)
        raise
    _commit(dest_loc, staging, version, manifest)
    manifest["uri"] = dest_loc.uri
    if progress:
        (results or Console()).print(summary_table(manifest))
    return manifest


def _discard(dest: Location, staging: Location, created: bool) -> None:
    """Best-effort removal of a failed ingest's staging prefix (and of DEST if this ingest created it)."""
    try:
        staging.rm(recursive=True)
        if created and not dest.is_s3 and dest.exists() and not dest.ls():
            dest.rm(recursive=True)
    except Exception:
        pass


def _split_files(files: dict[str, list[str]], version: str, folds: int) -> dict[str, list[str]]:
    """Each split's shard paths: a split's own folder, or with folds, val = fold 0 and train = the other folds."""
    fold_split = {f"fold-{k}": ("val" if k == 0 else "train") for k in range(folds)}
    out: dict[str, list[str]] = {sp: [] for sp in SPLITS}
    for bucket in sorted(files, key=lambda b: (b.startswith("fold-") and int(b[5:]), b)):
        out[fold_split.get(bucket, bucket)] += [f"{version}/{f}" for f in files[bucket]]
    return out


def _placement(records: list[Record], placed: Plan, files: dict[str, list[str]], cfg: IngestConfig,
               version: str) -> dict[str, Any]:
    """The manifest's record of how pairs were placed: strata and their counts per split, groups, folds."""
    ids = [r.pair.id for r in records]
    out: dict[str, Any] = {"strata": counts_by_stratum(placed, ids)}
    if cfg.group_column:
        groups = {sp: len({placed.groups[i] for i in ids if i in placed.groups and placed.split[i] == sp}) for sp in SPLITS}
        out["groups"] = {"column": cfg.group_column, "count": len({placed.groups[i] for i in ids if i in placed.groups}),
                         "per_split": groups}
    if cfg.folds:
        out["folds"] = {"k": cfg.folds, "counts": [sum(1 for i in ids if placed.fold.get(i) == k) for k in range(cfg.folds)],
                        "files": [[f"{version}/{f}" for f in files.get(f"fold-{k}", [])] for k in range(cfg.folds)]}
    return out


def _median_hw(records: list[Record]) -> list[int]:
    """The median height and width of ``records`` (the train split's): what ``data.crop_size: auto`` plans from."""
    return [int(np.median([r.height for r in records])), int(np.median([r.width for r in records]))]


def _split_by(cfg: IngestConfig) -> str | dict[str, Any]:
    if cfg.split_column:
        return f"column:{cfg.split_column}"
    return {"ratios": list(cfg.split), "seed": cfg.seed,
            "stratified_by": ["size", "channels", "bit_depth", "foreground_tertile"] if cfg.stratify else []}


def _manifest(records: list[Record], problems: list[Problem], files: dict[str, list[str]], names: list[str],
              cfg: IngestConfig, src: Location, version: str, placed: Plan) -> dict[str, Any]:
    counts = np.sum([r.class_counts for r in records], axis=0).astype(np.int64)
    total_px = int(counts.sum())
    stats = image_stats([r.pixels for r in records], [r.split == "train" for r in records], cfg)
    fp = hashlib.sha256(json.dumps({"mask_mode": cfg.mask_mode, "class_names": names}, sort_keys=True).encode())
    for r in records:
        fp.update(r.digest.encode())
    heights, widths = [r.height for r in records], [r.width for r in records]
    split_files = _split_files(files, version, cfg.folds)
    return {
        "schema_version": SCHEMA_VERSION,
        "format": "unet-dist/parquet",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": src.uri,
        "mask_mode": cfg.mask_mode,
        "class_names": names,
        "num_classes": len(names),
        "channels": stats["channels"],
        "bit_depths": sorted({r.bit_depth for r in records}),
        "fingerprint": fp.hexdigest(),
        "counts": {**{sp: sum(1 for r in records if r.split == sp) for sp in SPLITS}, "total": len(records)},
        "splits": {sp: {"count": sum(1 for r in records if r.split == sp),
                        "pixels": int(sum(r.height * r.width for r in records if r.split == sp)),
                        "files": split_files[sp]} for sp in SPLITS},
        "split_by": _split_by(cfg),
        **_placement(records, placed, files, cfg, version),
        "class_pixel_counts": {n: int(c) for n, c in zip(names, counts)},
        "class_pixel_freq": {n: (float(c) / total_px if total_px else 0.0) for n, c in zip(names, counts)},
        "image_stats": stats,
        "image_size": {"min_hw": [min(heights), min(widths)], "max_hw": [max(heights), max(widths)],
                       "median_hw": _median_hw([r for r in records if r.split == "train"] or records)},
        "skipped": [p.to_json() for p in problems],
        "rows_per_shard": cfg.rows_per_shard,
        "parquet_columns": PARQUET_SCHEMA.names,
    }


def _commit(dest: Location, staging: Location, version: str, manifest: dict[str, Any]) -> None:
    """Put shards in place, write dataset.json (the commit point), then drop the previous version and stale temps.

    Locally shards are renamed from ``.tmp-<id>`` (atomic); on S3, where a rename is a copy, they are written
    straight to ``data-<id>/``, which nothing references until the manifest lands.
    """
    if staging.name != version:
        os.replace(staging.path, dest.join(version).path)
    dest.join(MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for child in dest.ls():
        if (child.name.startswith("data-") and child.name != version) or child.name.startswith(".tmp-"):
            child.rm(recursive=True)


def summary_table(manifest: dict[str, Any]) -> Table:
    """The final ingest summary: splits, classes with pixel frequencies, sizes, intensity scale, stats, skipped pairs."""
    table = Table(title=f"dataset {manifest.get('uri', '')}".strip(), show_header=True)
    table.add_column("item")
    table.add_column("value", overflow="fold")
    counts = manifest["counts"]
    table.add_row("pairs", f"{counts['total']} (train {counts['train']}, val {counts['val']}, test {counts['test']})")
    table.add_row("mask mode", manifest["mask_mode"])
    for name, freq in manifest["class_pixel_freq"].items():
        table.add_row(f"class {name}", f"{freq:.2%} of pixels")
    size = manifest["image_size"]
    table.add_row("image size", f"{size['min_hw'][0]}x{size['min_hw'][1]} .. {size['max_hw'][0]}x{size['max_hw'][1]}, "
                                f"{manifest['channels']} ch, {'/'.join(str(b) for b in manifest['bit_depths'])}-bit")
    stats = manifest["image_stats"]
    ranges = stats.get("scale", {}).get("ranges", {})
    table.add_row("intensity", f"{stats.get('scale', {}).get('intensity', 'dtype')}: "
                               + ", ".join(f"{d} {lo:g}..{hi:g} -> 0..1" for d, (lo, hi) in ranges.items()))
    table.add_row("mean / std", ", ".join(f"{m:.4f}/{s:.4f}" for m, s in zip(stats["mean"], stats["std"])))
    _placement_rows(table, manifest)
    table.add_row("fingerprint", manifest["fingerprint"][:16])
    table.add_row("skipped", str(len(manifest["skipped"])))
    return table


_STRATA_SHOWN = 8


def _placement_rows(table: Table, manifest: dict[str, Any]) -> None:
    """Summary rows for the strata (train/val/test per stratum, the largest first), groups and folds."""
    shown = sorted(manifest.get("strata", {}).items(), key=lambda kv: -sum(kv[1].values()))
    if len(shown) > 1:
        table.add_row("strata", f"{len(shown)}, train/val/test each:")
        for label, n in shown[:_STRATA_SHOWN]:
            table.add_row(f"  {label}", f"{n['train']}/{n['val']}/{n['test']}")
        if len(shown) > _STRATA_SHOWN:
            table.add_row("  ...", f"{len(shown) - _STRATA_SHOWN} more in dataset.json")
    if "groups" in manifest:
        g = manifest["groups"]
        table.add_row("groups", f"{g['count']} by column {g['column']!r}; per split "
                                + ", ".join(f"{sp} {n}" for sp, n in g["per_split"].items()))
    if "folds" in manifest:
        f = manifest["folds"]
        table.add_row("folds", f"{f['k']} (fold 0 is val): " + "/".join(str(n) for n in f["counts"]) + " pairs")
