"""The on-storage layout of a training run, in one place.

A run directory ``STORAGE/<name>/`` holds::

    run.json                  # the run record: config (no secrets), dataset, code version, status, best, final metrics
    metrics.jsonl             # one line per completed epoch: a validation round, one pass over the training data or
                              # (train.val_every_*) part of one; epochs_done counts passes (all reported metrics,
                              # confusion matrix)
    events.jsonl              # each worker-group start (resume source, nodes) and each completed epoch
    progress.json             # the latest step, for live views
    tensorboard/              # TensorBoard event files
    epoch_NNNN/state.pt       # a checkpoint (torch, loadable with weights_only=True) ...
    epoch_NNNN/COMPLETE       # ... and its marker, written last: file sizes, SHA-256s and the epoch

A campaign directory ``STORAGE/<campaign>/`` (``unet-dist tune``) holds::

    campaign.json             # the campaign record: space, scheduler, search, metric, status, skipped grid points
    trials/<trial_id>/        # one run directory per trial (above); its run.json has kind "trial", the searched
                              # values (params) and the trial status: running, finished, early_stopped, error, invalid
    tune/                     # Ray Tune's own experiment state (what --resume restores)

Train, tune and collect read and write runs through this module only; it imports nothing of the package
but storage and config, so a collector reads runs without the training code (or torch).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Literal

from unet_dist import __version__
from unet_dist.config import Config, StorageConfig
from unet_dist.errors import StorageError, UserError
from unet_dist.storage import Location, resolve

RUN_RECORD = "run.json"
METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
PROGRESS_FILE = "progress.json"
TENSORBOARD_DIR = "tensorboard"
STATE_FILE = "state.pt"
MARKER_FILE = "COMPLETE"
RECORD_SCHEMA = 1
LEGACY_MONITOR = {"metric": "val_mean_iou", "mode": "max"}
"""What a record without ``monitor`` (written before records named it) was ranked by."""
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")

Status = Literal["running", "finished", "failed", "stopped", "early_stopped", "error", "invalid"]
CAMPAIGN_RECORD = "campaign.json"
TRIALS_DIR = "trials"
TUNE_STATE_DIR = "tune"


DATASET_RECORD = "dataset.json"
"""An ingested dataset's manifest, written last (``unet_dist.data.manifest`` reads it; the collector skips its folder)."""


def epochs_done(row: dict[str, Any]) -> float:
    """Passes over the training data a metrics row had trained: its ``epochs_done`` (a validation round may end
    mid-pass, ``train.val_every_*``), or one pass per epoch in rows written before rounds."""
    return row.get("epochs_done", row["epoch"] + 1)


def checkpoint_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def checkpoint_dir_epoch(name: str) -> int | None:
    """The epoch a checkpoint folder's name (``epoch_NNNN``) stands for; None for any other name. The one pattern
    the run folder, the collector's scan and gc match."""
    m = _EPOCH_DIR.match(name)
    return int(m.group(1)) if m else None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class MarkerError(ValueError):
    """A ``COMPLETE`` marker that is not one: not JSON, no file sizes, or a listed name that is not a plain file name."""


def file_name_problem(name: Any) -> str | None:
    """Why ``name`` is not a plain file name inside a checkpoint folder (None when it is one).

    The one check of the names a ``COMPLETE`` marker lists, on write (:func:`marker_text`, the checkpoint upload) and
    on read (:func:`read_marker`: :func:`is_complete`, export, ``state_location``): no separator (``/``, ``\\``), no
    ``.``/``..``, not empty, not absolute, no NUL, so a marker can never name a file outside its folder.
    """
    if not isinstance(name, str):
        return f"{name!r} is not a file name (a {type(name).__name__})"
    if not name:
        return "the name is empty"
    if name in (".", ".."):
        return f"{name!r} is not a file name"
    if "\0" in name:
        return f"{name!r} holds a NUL character"
    if "/" in name or "\\" in name:
        return f"{name!r} is a path, not a plain file name in the checkpoint folder"
    return None


def check_file_name(name: Any) -> str:
    """``name`` when it is a plain file name in a checkpoint folder, else a :class:`MarkerError` saying why."""
    problem = file_name_problem(name)
    if problem:
        raise MarkerError(f"{MARKER_FILE} lists a bad file name: {problem}")
    return name


def parse_marker(text: str | bytes) -> dict[str, Any]:
    """A ``COMPLETE`` marker's content, every listed name checked (:func:`file_name_problem`): ``files``
    ``{name: size}``, ``epoch`` and, when recorded, ``sha256`` ``{name: hex}``; a :class:`MarkerError` otherwise."""
    try:
        body = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise MarkerError(f"{MARKER_FILE} is not valid JSON") from None
    files = body.get("files") if isinstance(body, dict) else None
    if not isinstance(files, dict) or not files:
        raise MarkerError(f"{MARKER_FILE} lists no files")
    for name, size in files.items():
        check_file_name(name)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise MarkerError(f"{MARKER_FILE} gives {name!r} the size {size!r} (expected a byte count)")
    sha = body.get("sha256")
    if sha is not None:
        if not isinstance(sha, dict):
            raise MarkerError(f"{MARKER_FILE}: sha256 is not a {{name: hex}} mapping")
        for name, digest in sha.items():
            check_file_name(name)
            if name not in files or not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise MarkerError(f"{MARKER_FILE}: sha256 of {name!r} is not a SHA-256 of a listed file")
    return {"files": files, "epoch": body.get("epoch"), "sha256": sha}


def read_marker(loc: Location) -> dict[str, Any]:
    """The checked marker of the checkpoint folder ``loc`` (:func:`parse_marker`); FileNotFoundError without one."""
    marker = loc / MARKER_FILE
    if not marker.exists():
        raise FileNotFoundError(marker.uri)
    return parse_marker(marker.read_bytes())


def is_complete(loc: Location) -> bool:
    """True when a checkpoint folder's marker exists, lists only plain file names, and every file it lists has the
    recorded size."""
    try:
        files = read_marker(loc)["files"]
        return all((loc / name).size() == size for name, size in files.items())
    except (StorageError, OSError, ValueError, KeyError):
        return False


def checkpoint_epoch(loc: Location) -> int | None:
    """Epoch recorded in a checkpoint's marker (None if it has none)."""
    try:
        return json.loads((loc / MARKER_FILE).read_text()).get("epoch")
    except (StorageError, OSError, ValueError):
        return None


def marker_text(sizes: dict[str, int], epoch: int | None, sha256: dict[str, str] | None = None) -> str:
    """A ``COMPLETE`` marker: ``files`` ``{name: size}`` (read by every version), ``epoch`` and, when given, ``sha256``
    ``{name: hex}`` (what export compares to tell a retrained checkpoint from the one it copied). Names are checked
    (:func:`file_name_problem`): a :class:`MarkerError` for one that is not a plain file name."""
    body: dict[str, Any] = {"files": sizes, "epoch": epoch}
    if sha256 is not None:
        body["sha256"] = sha256
    text = json.dumps(body)
    parse_marker(text)
    return text


@dataclass(frozen=True)
class Best:
    """The kept-best epoch by the monitored metric, with its checkpoint."""

    metric: str
    mode: str
    value: float
    epoch: int
    checkpoint: str
    row: dict[str, Any]


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (not None, a bool, NaN or an infinity): the only values that rank."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def worst_value(mode: str) -> float:
    """The value that loses to every other in ``mode``: -inf for max, +inf for min."""
    return -math.inf if mode == "max" else math.inf


def reported_metrics(row: dict[str, Any], watched: Iterable[tuple[str, str]]) -> dict[str, int | float]:
    """What Ray sees of a metrics row (:func:`scalar_metrics`), with each watched ``(metric, mode)`` (the monitored
    metric that orders Ray's kept checkpoints, the campaign metric ASHA schedules by) replaced by
    :func:`worst_value` when it is not finite: a diverged epoch (NaN loss) never ranks first. The first mode given
    for a metric wins; metrics.jsonl keeps the true value."""
    out = scalar_metrics(row)
    seen: set[str] = set()
    for metric, mode in watched:
        if metric in seen:
            continue
        seen.add(metric)
        if metric in out and not is_finite(out[metric]):
            out[metric] = worst_value(mode)
    return out


def pick_best(rows: Iterable[dict[str, Any]], checkpoints: dict[int, Location], metric: str, mode: str) -> Best | None:
    """The best metrics row (by ``metric``/``mode``) among epochs that have a complete checkpoint; ties keep the earliest.
    Non-finite values (a diverged epoch's NaN) never count."""
    sign = 1.0 if mode == "max" else -1.0
    candidates = [r for r in rows if r["epoch"] in checkpoints and is_finite(r.get(metric))]
    if not candidates:
        return None
    row = max(candidates, key=lambda r: (sign * r[metric], -r["epoch"]))
    return Best(metric, mode, float(row[metric]), int(row["epoch"]), checkpoints[row["epoch"]].uri, row)


def scalar_metrics(row: dict[str, Any]) -> dict[str, int | float]:
    """The numeric fields of a metrics row: what Ray Train reports and checkpoints and summaries carry."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float))}


def best_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """The best epoch's metrics a leaderboard row needs (scalars and per-class IoU/Dice, no confusion matrix), so the
    collector ranks a run from its record alone."""
    return {**scalar_metrics(row), **{k: v for k, v in row.items() if k.startswith("val_per_class_")}}


class RecordFolder:
    """A folder on storage with a JSON record file (``RECORD``), rewritten whole on update (S3 has no append)."""

    RECORD = RUN_RECORD

    def __init__(self, loc: Location) -> None:
        self.loc = loc

    @property
    def uri(self) -> str:
        return self.loc.uri

    def read_record(self) -> dict[str, Any] | None:
        loc = self.loc / self.RECORD
        return json.loads(loc.read_text()) if loc.exists() else None

    def write_record(self, record: dict[str, Any]) -> None:
        (self.loc / self.RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n")

    def update_record(self, **fields: Any) -> dict[str, Any]:
        record = {**(self.read_record() or {}), **fields, "updated_at": now_iso()}
        self.write_record(record)
        return record


class RunDir(RecordFolder):
    """One run directory: its JSON-lines files, checkpoints and run record (``run.json``)."""

    def read_lines(self, name: str) -> list[dict[str, Any]]:
        loc = self.loc / name
        if not loc.exists():
            return []
        return [json.loads(line) for line in loc.read_text().splitlines() if line.strip()]

    def _write_lines(self, name: str, rows: list[dict[str, Any]]) -> None:
        (self.loc / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def append(self, name: str, row: dict[str, Any]) -> None:
        self._write_lines(name, self.read_lines(name) + [row])

    def metrics(self) -> list[dict[str, Any]]:
        return self.read_lines(METRICS_FILE)

    def events(self) -> list[dict[str, Any]]:
        return self.read_lines(EVENTS_FILE)

    def truncate_metrics(self, start_epoch: int) -> None:
        """Drop metrics of epochs that will be trained again (after a crash before their checkpoint)."""
        rows = self.metrics()
        keep = [r for r in rows if r["epoch"] < start_epoch]
        if len(keep) != len(rows):
            self._write_lines(METRICS_FILE, keep)

    def progress(self, **fields: Any) -> None:
        (self.loc / PROGRESS_FILE).write_text(json.dumps({"time": time.time(), **fields}))

    def read_progress(self) -> dict[str, Any]:
        loc = self.loc / PROGRESS_FILE
        return json.loads(loc.read_text()) if loc.exists() else {}

    def checkpoints(self) -> dict[int, Location]:
        """``{epoch: location}`` of every complete checkpoint folder, oldest first."""
        found = {}
        for child in self.loc.ls():
            epoch = checkpoint_dir_epoch(child.name)
            if epoch is not None and is_complete(child):
                found[epoch] = child
        return dict(sorted(found.items()))

    def best(self, metric: str, mode: str, rows: list[dict[str, Any]] | None = None) -> Best | None:
        return pick_best(self.metrics() if rows is None else rows, self.checkpoints(), metric, mode)



def new_record(cfg: Config, name: str, uri: str, dataset: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A run record for a run that is starting (status ``running``), for :func:`start_record`; ``fields`` add to it
    (the GPU decision of a run, a trial's campaign and searched values)."""
    return {
        "schema": RECORD_SCHEMA, "kind": "train", "name": name, "uri": uri, "status": "running", "error": None,
        "config": cfg.to_dict(), "dataset": dataset, "code_version": __version__,
        "started_at": now_iso(), "ended_at": None, "updated_at": now_iso(),
        "epochs": 0, "epochs_done": 0, "epochs_planned": cfg.train.epochs, "time_budget_s": cfg.train.time_budget_s, "train_time_s": 0.0,
        "monitor": {"metric": cfg.train.monitor, "mode": cfg.train.monitor_mode},
        "best": None, "best_val_iou": None, "best_epoch": None, "best_checkpoint": None, "final_metrics": {},
        **fields,
    }


def new_trial_record(cfg: Config, run: RunDir, campaign: str, trial_id: str, params: dict[str, Any],
                     dataset: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A trial's fresh run record: kind ``trial``, its campaign and its searched values (``fields``: the GPU
    decision)."""
    return new_record(cfg, trial_id, run.uri, dataset, kind="trial", campaign=campaign, trial_id=trial_id, params=params,
                      **fields)


KEPT_ON_RESUME = ("started_at", "epochs", "epochs_done", "train_time_s", "final_metrics")
"""What a resumed run's (or campaign's) record keeps from its previous one, besides its best (:data:`BEST_FIELDS`)."""
BEST_FIELDS = ("best", "best_val_iou", "best_epoch", "best_checkpoint", "best_metrics")


def start_record(folder: RecordFolder, fresh: dict[str, Any]) -> dict[str, Any]:
    """Write the record of a run, trial or campaign that is starting, the one place that does: ``fresh`` (status
    running), or on a resume ``fresh`` over the folder's record keeping what it knew from the first write on (start
    time, epochs done, best and its checkpoint while the monitor is the same, so gc never sees a run without its
    best) and appending the time to ``resumed_at``."""
    previous = folder.read_record()
    if not previous:
        record = fresh
    else:
        kept = KEPT_ON_RESUME + (BEST_FIELDS if previous.get("monitor") == fresh.get("monitor") else ())
        record = {**fresh, **{k: previous[k] for k in kept if k in previous},
                  "resumed_at": [*previous.get("resumed_at", []), fresh["updated_at"]]}
    folder.write_record(record)
    return record


def progress_fields(rows: list[dict[str, Any]], best: Best | None) -> dict[str, Any]:
    """The record fields that follow each epoch: epochs done, best (monitored metric, epoch, checkpoint), final metrics."""
    return {
        "epochs": len(rows),
        "epochs_done": epochs_done(rows[-1]) if rows else 0,
        "best": None if best is None else {"metric": best.metric, "mode": best.mode, "value": best.value,
                                           "epoch": best.epoch, "checkpoint": best.checkpoint},
        "best_val_iou": None if best is None else best.row.get("val_iou"),
        "best_epoch": None if best is None else best.epoch,
        "best_checkpoint": None if best is None else best.checkpoint,
        "best_metrics": {} if best is None else best_metrics(best.row),
        "final_metrics": scalar_metrics(rows[-1]) if rows else {},
        "train_time_s": rows[-1].get("train_time_s", 0.0) if rows else 0.0,
    }


def finish_record(run: RunDir, status: Status, error: str | None = None, rows: list[dict[str, Any]] | None = None,
                  ended_at: str | None = None, **extra: Any) -> dict[str, Any]:
    """Close a run record with its final status, end time (now, or ``ended_at`` when the run ended before whoever
    closes it looked) and the best/final metrics found on storage (``rows``: its metrics when the caller has read
    them already)."""
    cfg_monitor = (run.read_record() or {}).get("monitor") or LEGACY_MONITOR
    rows = run.metrics() if rows is None else rows
    best = run.best(cfg_monitor["metric"], cfg_monitor["mode"], rows)
    return run.update_record(status=status, error=error, ended_at=ended_at or now_iso(), **progress_fields(rows, best),
                             **extra)


class CampaignDir(RecordFolder):
    """One campaign directory: its record (``campaign.json``), one :class:`RunDir` per trial, Ray Tune's state."""

    RECORD = CAMPAIGN_RECORD

    def exists(self) -> bool:
        return (self.loc / CAMPAIGN_RECORD).exists()

    def trial(self, trial_id: str) -> RunDir:
        return RunDir(self.loc / TRIALS_DIR / trial_id)

    def trials(self) -> dict[str, RunDir]:
        """``{trial_id: RunDir}`` of every trial folder on storage."""
        folder = self.loc / TRIALS_DIR
        if not folder.exists():
            return {}
        return {child.name: RunDir(child) for child in sorted(folder.ls(), key=lambda c: c.name)}


def new_campaign_record(cfg: Config, name: str, uri: str, space: dict[str, Any], skipped: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of a campaign that is starting."""
    metric, mode = cfg.campaign_metric
    return {
        "schema": RECORD_SCHEMA, "kind": "campaign", "name": name, "uri": uri, "status": "running", "error": None,
        "search_space": space, "scheduler": cfg.tune.scheduler, "search": cfg.tune.search, "metric": metric, "mode": mode,
        "num_samples": cfg.tune.num_samples, "max_concurrent_trials": cfg.tune.max_concurrent_trials,
        "skipped": skipped, "config": cfg.to_dict(), "code_version": __version__,
        "started_at": now_iso(), "ended_at": None, "updated_at": now_iso(), "resumed_at": [],
    }


# --- the model store and checkpoint references: what evaluate, predict, --resume-from and model.weights accept

class CheckpointError(UserError):
    """A checkpoint file that cannot be used: missing, truncated, not ours, or refused by the safe loader."""


MODEL_CARD = "model.json"
"""An exported model folder's card (written last by ``unet-dist export``)."""
WEIGHTS_FILE = "model.safetensors"
"""An exported model's weights alone, beside its state file: what other tools load, no pickle needed."""
ALIAS_FILE = "alias.json"
"""A model-store alias folder's file: ``{"model": "<folder name beside the alias>"}``."""
CHAMPION = "champion"
"""The alias ``unet-dist export`` points at its best model."""
_MAX_ALIAS_HOPS = 4


REPORTS_DIR = "reports"
"""``STORAGE/reports/<campaign or run>.html``: where ``collect``'s publish (jobs/collect.py, ``make demo``) renders."""


def report_location(root: Location, folder: Location) -> Location:
    """Where the report of the campaign or run at ``folder`` under the storage ``root`` is published."""
    return root / REPORTS_DIR / f"{folder.name}.html"


def content_digest(files: dict[str, dict[str, Any]]) -> str:
    """One SHA-256 over an exported model's files (``{name: {"bytes", "sha256"}}``, as its card records them): what
    the champion alias and a registered model version are keyed by."""
    listed = sorted((name, f.get("bytes"), f.get("sha256")) for name, f in files.items())
    return hashlib.sha256(json.dumps(listed).encode()).hexdigest()


def state_location(uri: str | Location, storage: StorageConfig | None = None) -> Location:
    """The state file a checkpoint reference names: ``uri`` itself when it is a file (any name); for a folder, the
    model an ``alias.json`` in it names (followed), else ``uri/state.pt``.

    A folder whose ``COMPLETE`` marker does not match its files, or an exported model folder without its card
    (an export cut short), is refused with :class:`CheckpointError`.
    """
    loc = resolve(uri, storage)
    for _ in range(_MAX_ALIAS_HOPS):
        if not loc.isdir():
            return loc
        alias = loc / ALIAS_FILE
        if not alias.exists():
            _check_folder(loc)
            return loc / STATE_FILE
        loc = _alias_target(loc, alias)
    raise CheckpointError(f"{resolve(uri, storage).uri}: more than {_MAX_ALIAS_HOPS} aliases in a row; fix {ALIAS_FILE}")


def _alias_target(folder: Location, alias: Location) -> Location:
    """The model folder an alias names: a sibling folder, by plain name (so a store can be moved or synced whole)."""
    try:
        name = json.loads(alias.read_text())["model"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{alias.uri} is not a model alias (expected {{\"model\": NAME}})") from None
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise CheckpointError(f"{alias.uri}: model {name!r} is not a folder name in the same store")
    target = folder.parent / name
    if not target.isdir():
        raise CheckpointError(f"{folder.uri} names model {name!r}, which is not in the store ({target.uri} is missing)")
    if not (target / MODEL_CARD).exists():
        raise CheckpointError(f"{folder.uri} names model {name!r}, whose export did not finish (no {MODEL_CARD}): "
                              "export it again")
    return target


def _check_folder(loc: Location) -> None:
    """Refuse a checkpoint folder cut short: marker sizes that do not match, or a model folder without its card."""
    marker, card = (loc / MARKER_FILE).exists(), (loc / MODEL_CARD).exists()
    if marker:
        try:
            read_marker(loc)
        except MarkerError as err:
            raise CheckpointError(f"checkpoint {loc.uri} is refused: {err}") from None
    if marker and not is_complete(loc):
        raise CheckpointError(f"checkpoint {loc.uri} is truncated or corrupt: its files do not match the sizes in "
                              f"{MARKER_FILE} (a copy or upload cut short); use another checkpoint of the run")
    if card and not marker:
        raise CheckpointError(f"model folder {loc.uri} is incomplete (no {MARKER_FILE}): export it again")
