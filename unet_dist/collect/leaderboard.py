"""The leaderboard: one row per run or trial on storage, ranked by the monitored metric, kept as Parquet.

``collect(storage)`` lists the storage once, reads ``run.json`` (and ``metrics.jsonl`` of records older than
``best_metrics``) of the runs that are new or
changed since the last collection (never a checkpoint), takes the others from the private index beside the
leaderboard, and writes ``STORAGE/leaderboard/leaderboard.parquet`` in one write (a single PUT on S3, a rename
locally), so pandas, pyarrow and DuckDB read it as a dataset at any time.

Folders that are not runs, unreadable or truncated records and empty folders are skipped, one reason each. A run
whose best checkpoint is missing or has no ``COMPLETE`` marker keeps its row (its metrics are sound, and gc may
have removed the checkpoint on purpose): ``best_checkpoint`` is empty and ``problem`` says why.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Sequence, get_args

from unet_dist.collect.scan import LEADERBOARD_DIR, RunFolder, find_runs, list_tree
from unet_dist.config import StorageConfig, TrainConfig
from unet_dist.errors import UserError
from unet_dist.runs import METRICS_FILE, RUN_RECORD, Status, is_finite
from unet_dist.storage import Location, read_many, resolve

LEADERBOARD_FILE = "leaderboard.parquet"
INDEX_FILE = "_index.json.gz"
INDEX_VERSION = 2  # 2: rows carry the per-image metrics
DEFAULT_METRIC = (TrainConfig.model_fields["monitor"].default, TrainConfig.model_fields["monitor_mode"].default)
"""The ranking when the runs name no single monitor: the schema's default."""
STATUSES: tuple[str, ...] = get_args(Status)
HEAD = ("rank", "campaign", "trial", "kind", "status")
_RANKED = ("val_iou", "val_mean_iou", "val_dice", "val_image_iou", "val_image_mean_iou")
"""Pooled IoU, mean IoU and Dice, and the per-image IoU and mean IoU (inference/metrics.py), at the best and last epoch."""
METRIC_COLUMNS = ("metric", "mode", "best_value", "best_epoch", *(f"{w}_{m}" for w in ("best", "final") for m in _RANKED))
TAIL = ("epochs", "epochs_planned", "train_time_s", "wall_time_s", "gpu_hours", "images_per_s", "dataset",
        "dataset_fingerprint", "best_checkpoint", "run_uri", "started_at", "ended_at", "updated_at", "error", "problem")
_NUMERIC = frozenset({"rank", "best_value", "best_epoch", *(f"{w}_{m}" for w in ("best", "final") for m in _RANKED),
                      "epochs", "epochs_planned", "train_time_s", "wall_time_s", "gpu_hours", "images_per_s"})


def run_row(record: dict[str, Any], campaign: str | None = None, *,
            metrics: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One leaderboard row from a run record (and, for per-class IoU and Dice at the best epoch, its metrics rows).

    Searched values become columns named by their dotted config keys; per-class IoU of the best epoch becomes
    ``iou.<class>``. Locations are the recorded ones; :func:`collect` replaces them with where the run was found.
    """
    monitor = record.get("monitor") or {}
    best = record.get("best") or {}
    final = record.get("final_metrics") or {}
    best_epoch = best.get("epoch", record.get("best_epoch"))
    best_row = (record.get("best_metrics") or _epoch_row(metrics, best_epoch)
                or (final if best_epoch is not None and final.get("epoch") == best_epoch else {}))
    if not best_row and best.get("metric"):
        best_row = {best["metric"]: best.get("value"), "val_iou": record.get("best_val_iou")}
    per_class = best_row.get("val_per_class_iou") or {}
    dataset = record.get("dataset") or {}
    return {
        "campaign": campaign if campaign is not None else record.get("campaign"),
        "trial": record.get("trial_id") or record.get("name"),
        "kind": record.get("kind"),
        "status": record.get("status"),
        **dict(record.get("params") or {}),
        "metric": best.get("metric") or monitor.get("metric"),
        "mode": best.get("mode") or monitor.get("mode"),
        "best_value": best.get("value"),
        "best_epoch": best_epoch,
        **{f"best_{m}": _num(best_row.get(m)) for m in _RANKED},
        **{f"final_{m}": _num(final.get(m)) for m in _RANKED},
        **{f"iou.{name}": _num(v) for name, v in per_class.items()},
        "epochs": record.get("epochs"),
        "epochs_planned": record.get("epochs_planned"),
        "train_time_s": _num(record.get("train_time_s")),
        "wall_time_s": _wall_time(record),
        "gpu_hours": _gpu_hours(record, final),
        "images_per_s": _num(final.get("images_per_s")),
        "dataset": dataset.get("uri"),
        "dataset_fingerprint": dataset.get("fingerprint"),
        "best_checkpoint": record.get("best_checkpoint") or best.get("checkpoint"),
        "run_uri": record.get("uri"),
        "started_at": record.get("started_at"),
        "ended_at": record.get("ended_at"),
        "updated_at": record.get("updated_at"),
        "error": _first_line(record.get("error")),
        "problem": None,
    }


def _epoch_row(metrics: Sequence[dict[str, Any]] | None, epoch: Any) -> dict[str, Any]:
    return next((r for r in reversed(metrics or []) if r.get("epoch") == epoch), {}) if epoch is not None else {}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _wall_time(record: dict[str, Any]) -> float | None:
    try:
        start = datetime.fromisoformat(record["started_at"])
        end = datetime.fromisoformat(record.get("ended_at") or record["updated_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


def _gpu_hours(record: dict[str, Any], final: dict[str, Any]) -> float | None:
    """GPUs held over the run's wall time, in hours (0 for a CPU run; None for a record that does not say)."""
    wall = _wall_time(record)
    if wall is None or "use_gpu" not in record:
        return None
    if not record["use_gpu"]:
        return 0.0
    resources = (record.get("config") or {}).get("resources") or {}
    workers = final.get("world_size") or resources.get("num_workers") or 1
    workers = max(workers) if isinstance(workers, (list, tuple)) else workers
    return wall * float(workers) * float(resources.get("gpus_per_worker") or 1.0) / 3600.0


def _first_line(text: Any) -> str | None:
    return str(text).strip().splitlines()[0][:300] if text else None


@dataclass
class Leaderboard:
    """Rows best first by ``metric``/``mode``, the folders skipped (uri, reason), status counts, and what it cost."""

    rows: list[dict[str, Any]]
    metric: str
    mode: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    uri: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> list[dict[str, Any]]:
        """Rows kept with a problem (best checkpoint missing or incomplete)."""
        return [r for r in self.rows if r.get("problem")]

    @property
    def columns(self) -> list[str]:
        return columns(self.rows)

    @property
    def searched(self) -> list[str]:
        """The searched keys among the columns (dotted config keys; ``iou.*`` are per-class scores)."""
        return [c for c in self.columns if "." in c and not c.startswith("iou.")]

    def warnings(self) -> list[str]:
        """One line per skipped folder and per flagged row."""
        return ([f"skipped {uri}: {reason}" for uri, reason in self.skipped]
                + [f"{r['run_uri']}: {r['problem']}" for r in self.flagged])

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts.items()))
        flagged = f", {len(self.flagged)} with a checkpoint problem" if self.flagged else ""
        return f"{len(self.rows)} rows ({counts or 'none'}), {len(self.skipped)} skipped{flagged}"

    def to_json(self, limit: int | None = None) -> str:
        return json.dumps({"uri": self.uri, "metric": self.metric, "mode": self.mode, "summary": self.summary(),
                           "counts": self.counts, "rows": self.rows[:limit],
                           "skipped": [{"uri": u, "reason": r} for u, r in self.skipped], "stats": self.stats}, default=str)

    def to_arrow(self) -> Any:
        return to_arrow(self.rows)

    def to_table(self, limit: int | None = None, wide: bool = False) -> Any:
        """A rich table, readable at 80 columns: rank, run, status, the searched values (abbreviated), the monitored
        metric, its epoch, epochs and time; ``wide`` adds foreground and per-class IoU and Dice, values whole."""
        if not wide:
            return self._compact_table(limit)
        from rich import box
        from rich.table import Table

        params = self.searched
        classes = [c for c in self.columns if c.startswith("iou.")]
        t = Table(title=f"leaderboard by {self.metric} ({self.mode}): {len(self.rows[:limit])} of {len(self.rows)} runs",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
        for name in ("#", "run", "status", *(p.split(".")[-1] for p in params)):
            t.add_column(name, justify="right" if name == "#" else "left", no_wrap=True)
        for name in (self.metric.removeprefix("val_"), "ep", "fg IoU", *(f"{c[4:]}" for c in classes), "Dice", "epochs", "wall s"):
            t.add_column(name, justify="right", no_wrap=True)
        for r in self.rows[:limit]:
            status = r["status"] if not r.get("problem") else f"{r['status']} [yellow]![/]"
            t.add_row(str(r["rank"]), _run_label(r), status, *(_fmt(r.get(p)) for p in params),
                      _fmt(sort_value(r, self.metric)), _fmt(r.get("best_epoch")), _fmt(r.get("best_val_iou")),
                      *(_fmt(r.get(c)) for c in classes), _fmt(r.get("best_val_dice")), _fmt(r.get("epochs")),
                      _fmt(r.get("wall_time_s"), 0))
        return t

    def _compact_table(self, limit: int | None, width: int = 80) -> Any:
        """The default table: chosen columns whose headers and values fit ``width`` columns, searched keys and values
        abbreviated to share what the fixed columns leave (``--wide`` for the rest, whole)."""
        from unet_dist.live import STATUS_SHORT, compact_table, metric_label

        rows = self.rows[:limit]
        campaigns = {r.get("campaign") for r in self.rows}
        one = next(iter(campaigns)) if len(campaigns) == 1 and None not in campaigns else None
        head = ["#", "trial" if one else "run", "status"]
        tail = [metric_label(self.metric).removeprefix("val ").replace("image ", "img "), "ep", "wall s"]
        lines = [([str(r["rank"]), str(r["trial"]).rsplit("_", 1)[-1] if one else _run_label(r)[:24],
                   STATUS_SHORT.get(r["status"], r["status"]) + (" !" if r.get("problem") else "")],
                  [r.get(p) for p in self.searched],
                  [_fmt(sort_value(r, self.metric)), f"{_fmt(r.get('best_epoch'))}/{_fmt(r.get('epochs'))}",
                   _fmt(r.get("wall_time_s"), 0)]) for r in rows]
        where = f" of campaign {one}" if one else ""
        return compact_table(head, self.searched, tail, lines, width=width,
                             title=f"leaderboard by {self.metric} ({self.mode}){where}: {len(rows)} of {len(self.rows)} runs",
                             caption="ep: best epoch/epochs · --wide: all columns")


def _run_label(row: dict[str, Any]) -> str:
    """``campaign/<trial number>`` for a trial (Tune's ids share their experiment prefix), the run name otherwise."""
    if not row.get("campaign"):
        return str(row["trial"])
    return f"{row['campaign']}/{str(row['trial']).rsplit('_', 1)[-1]}"


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def sort_value(row: dict[str, Any], metric: str) -> float | None:
    """The row's value of ``metric`` at its best epoch."""
    if row.get("metric") == metric and row.get("best_value") is not None:
        return row["best_value"]
    return row.get(f"best_{metric}")


def rank(rows: list[dict[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Rows best first (rows without a finite value last: none, NaN or infinite, as a diverged run reports; then by
    campaign and trial), numbered from 1 in ``rank``."""
    sign = -1.0 if mode == "max" else 1.0

    def key(r: dict[str, Any]) -> tuple:
        v = sort_value(r, metric)
        ok = is_finite(v)
        return (not ok, sign * v if ok else 0.0, r.get("campaign") or "", str(r.get("trial")))

    return [{"rank": i, **r} for i, r in enumerate(sorted(rows, key=key), 1)]


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Column order: identity, searched values, metrics, per-class IoU, then the rest."""
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    known = set(HEAD) | set(METRIC_COLUMNS) | set(TAIL)
    params = sorted(c for c in seen if c not in known and not c.startswith("iou."))
    classes = [c for c in seen if c.startswith("iou.")]
    return [*HEAD, *params, *METRIC_COLUMNS, *classes, *TAIL]


def to_arrow(rows: Sequence[dict[str, Any]]) -> Any:
    """A pyarrow Table of the rows; a column of mixed types (a searched value) is stored as JSON text."""
    import pyarrow as pa

    arrays = {}
    for col in columns(rows):
        values = [r.get(col) for r in rows]
        try:
            array = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            array = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
        if pa.types.is_null(array.type):
            array = array.cast(pa.float64() if col in _NUMERIC or col.startswith("iou.") else pa.string())
        arrays[col] = array
    return pa.table(arrays)


def collect(root: str | Location, *, storage: StorageConfig | None = None, campaigns: Sequence[str] | None = None,
            statuses: Sequence[str] | None = None, write: bool = True, metric: str | None = None, mode: str | None = None,
            progress: Callable[[int, int], None] | None = None) -> Leaderboard:
    """Collect every run and trial under ``storage`` into a :class:`Leaderboard` (and write it unless ``write=False``).

    ``campaigns``/``statuses`` filter the returned rows (a single run matches by its name); the Parquet written always
    holds every run. ``metric``/``mode`` rank the rows (default: the runs' common monitored metric, else val_mean_iou).
    ``progress(done, total)`` is called while records are read.
    """
    unknown = sorted(set(statuses or ()) - set(STATUSES))
    if unknown:
        raise UserError(f"unknown status {', '.join(unknown)}: choose from {', '.join(STATUSES)}")
    start = time.perf_counter()
    root = resolve(root, storage)
    listing = list_tree(root)
    runs, skipped_rel = find_runs(listing)
    old, index_sig = _read_index(root, listing)
    stats = {"runs": len(runs), "files_listed": len(listing.files), "list_requests": listing.requests,
             "get_requests": int(index_sig is not None), "put_requests": 0}
    entries, read = _entries(root, runs, old, stats, progress)
    rows = []
    for run in runs:
        entry = entries[run.key]
        if entry.get("skip"):
            skipped_rel.append((run.key, entry["skip"]))
        else:
            rows.append(_place(entry["row"], root, run))
    metric, mode = _ranking(rows, metric, mode)
    ranked = rank(rows, metric, mode)
    cols = columns(ranked)
    rows = [{c: r.get(c) for c in cols} for r in ranked]
    uri = (root / LEADERBOARD_DIR / LEADERBOARD_FILE).uri
    if write:
        _write(root, listing, rows, entries, index_sig, metric, mode, stats)
    stats.update(read=read, cached=len(runs) - read, seconds=round(time.perf_counter() - start, 3))
    stats["requests"] = stats["list_requests"] + stats["get_requests"] + stats["put_requests"]
    rows, skipped_rel = _filter(rows, skipped_rel, campaigns, statuses)
    skipped = [(root.join(rel).uri, reason) for rel, reason in sorted(skipped_rel)]
    return Leaderboard(rows, metric, mode, skipped, dict(Counter(r["status"] for r in rows)), uri, stats)


def _entries(root: Location, runs: list[RunFolder], old: dict[str, Any], stats: dict[str, Any],
             progress: Callable[[int, int], None] | None) -> tuple[dict[str, dict[str, Any]], int]:
    """Index entries for every run: the cached one when its files' signatures are unchanged, else read anew."""
    entries: dict[str, dict[str, Any]] = {}
    stale = []
    for run in runs:
        entry = old.get(run.key)
        if entry is not None and entry.get("sig") == run.signature:
            entries[run.key] = entry
        else:
            stale.append(run)
    chunk = 512
    for i in range(0, len(stale), chunk):
        batch = stale[i:i + chunk]
        data = read_many(root, [f"{r.key}/{RUN_RECORD}" for r in batch])
        older = [f"{r.key}/{METRICS_FILE}" for r in batch if r.metrics_sig and _needs_metrics(data[f"{r.key}/{RUN_RECORD}"])]
        data.update(read_many(root, older))
        stats["get_requests"] += len(batch) + len(older)
        for run in batch:
            entries[run.key] = {"sig": run.signature, **_parse(run, data)}
        if progress:
            progress(min(i + chunk, len(stale)), len(stale))
    return entries, len(stale)


def _needs_metrics(raw: bytes | Exception) -> bool:
    """Whether a record predates ``best_metrics`` (per-class IoU of the best epoch), so ``metrics.jsonl`` is read too."""
    return not isinstance(raw, Exception) and b'"best_metrics"' not in raw


def _parse(run: RunFolder, data: dict[str, bytes | Exception]) -> dict[str, Any]:
    """``{"row": ...}`` from a run's files, or ``{"skip": reason}`` when its record cannot be used."""
    raw = data[f"{run.key}/{RUN_RECORD}"]
    if isinstance(raw, Exception):
        return {"skip": f"run.json unreadable ({type(raw).__name__})"}
    try:
        record = json.loads(raw)
    except ValueError:
        return {"skip": "run.json is not valid JSON (truncated or half-written)"}
    if not isinstance(record, dict) or record.get("kind") not in ("train", "trial"):
        return {"skip": "run.json is not a unet-dist run record"}
    metrics = _lines(data.get(f"{run.key}/{METRICS_FILE}"))
    return {"row": run_row(record, run.campaign, metrics=metrics)}


def _lines(raw: bytes | Exception | None) -> list[dict[str, Any]] | None:
    """Metrics rows; a line being written (or cut short) is left out rather than failing the run."""
    if raw is None or isinstance(raw, Exception):
        return None
    rows = []
    for line in raw.decode(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _place(row: dict[str, Any], root: Location, run: RunFolder) -> dict[str, Any]:
    """The row located where the run was found (records hold the URIs they were written at), checkpoint checked."""
    recorded = row.get("best_checkpoint")
    name = posixpath.basename(recorded.rstrip("/")) if recorded else None
    problem = None
    if name is not None:
        complete = run.checkpoints.get(name)
        if complete is None:
            problem = f"best checkpoint {name} missing"
        elif not complete:
            problem = f"best checkpoint {name} incomplete (no COMPLETE marker)"
    run_loc = root.join(run.key)
    return {**row, "campaign": run.campaign, "trial": posixpath.basename(run.key), "run_uri": run_loc.uri,
            "best_checkpoint": (run_loc / name).uri if name and problem is None else None, "problem": problem}


def _ranking(rows: list[dict[str, Any]], metric: str | None, mode: str | None) -> tuple[str, str]:
    if metric:
        return metric, mode or ("min" if "loss" in metric else "max")
    monitors = {(r["metric"], r["mode"]) for r in rows if r.get("metric")}
    return next(iter(monitors)) if len(monitors) == 1 else DEFAULT_METRIC


def _filter(rows: list[dict[str, Any]], skipped: list[tuple[str, str]], campaigns: Sequence[str] | None,
            statuses: Sequence[str] | None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    if campaigns:
        names = set(campaigns)
        rows = [r for r in rows if (r["campaign"] if r["campaign"] is not None else r["trial"]) in names]
        skipped = [(rel, reason) for rel, reason in skipped if rel.split("/")[0] in names]
    if statuses:
        rows = [r for r in rows if r["status"] in set(statuses)]
    return rows, skipped


def _read_index(root: Location, listing: Any) -> tuple[dict[str, Any], str | None]:
    """The previous collection's entries by run folder, and the index's own signature (None if there is none)."""
    rel = f"{LEADERBOARD_DIR}/{INDEX_FILE}"
    if rel not in listing.files:
        return {}, None
    raw = read_many(root, [rel])[rel]
    try:
        index = json.loads(gzip.decompress(raw))  # type: ignore[arg-type]
    except (TypeError, ValueError, OSError, EOFError):
        return {}, ""
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
        return {}, ""
    return index.get("entries") or {}, index.get("digest", "")


def _write(root: Location, listing: Any, rows: list[dict[str, Any]], entries: dict[str, Any], index_sig: str | None,
           metric: str, mode: str, stats: dict[str, Any]) -> None:
    """Write the Parquet leaderboard, then the index; nothing when neither changed since the last collection."""
    import pyarrow.parquet as pq

    state = [root.uri, metric, mode, sorted((k, e["sig"]) for k, e in entries.items()),
             [(r["run_uri"], r["best_checkpoint"], r["problem"]) for r in rows]]
    digest = hashlib.sha256(json.dumps(state, default=str).encode()).hexdigest()
    folder = root / LEADERBOARD_DIR
    if digest == index_sig and f"{LEADERBOARD_DIR}/{LEADERBOARD_FILE}" in listing.files:
        return
    buf = io.BytesIO()
    pq.write_table(to_arrow(rows), buf)
    (folder / LEADERBOARD_FILE).write_bytes(buf.getvalue())
    index = {"version": INDEX_VERSION, "digest": digest, "metric": metric, "mode": mode, "entries": entries}
    (folder / INDEX_FILE).write_bytes(gzip.compress(json.dumps(index, default=str).encode(), mtime=0))
    stats["put_requests"] += 2
