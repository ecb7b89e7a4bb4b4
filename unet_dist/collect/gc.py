"""Retention (``unet-dist gc``): keep the checkpoints worth keeping, delete the rest, dry run first.

Only checkpoint folders (``epoch_NNNN/``) of runs and trials the leaderboard reads are ever deleted; records,
metrics, TensorBoard logs, Ray Tune's state, model stores and folders that are not runs are never touched. Kept:

- every checkpoint Ray's snapshot (``RUN/checkpoint_manager_snapshot.json``) references in a run that is not
  terminal (anything but finished, early_stopped, invalid): ``train --name`` / ``tune --resume`` restore it;
- the best checkpoint of the ``keep_best`` best runs or trials (ranked as the leaderboard ranks them);
- each run's best checkpoint (``keep_trial_best``) and its newest complete one (``keep_latest``, on by default:
  a resume or an extension with more epochs starts from it);
- every checkpoint an export pinned (``STORAGE/exports/``, see :mod:`unet_dist.collect.export`), until the export
  is removed (``unet-dist export --remove``), whether or not its model store is visible from here;
- a ``running`` run's newest complete checkpoint and anything newer (being written).

Everything else goes, orphans included: folders without a complete ``COMPLETE`` marker (an upload or a crash cut
short) and checkpoints of epochs after the last one a stopped run recorded (ASHA-stopped trials train on briefly).
Before a terminal run loses a checkpoint its snapshot references, the snapshot is rewritten without it (so the run
can still be extended). A run whose record cannot be read, or a snapshot that cannot be parsed, is left alone.

The plan is computed from one listing and has a digest; ``write_plan``/``verified_plan`` (``--plan FILE``) let
``--yes`` delete exactly a plan reviewed earlier, or refuse when storage changed since. Each deletion is checked
(:func:`unet_dist.storage.remove_tree`): refused objects and delete markers of a versioned bucket are reported,
never counted as freed.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from unet_dist.collect import ray_snapshot
from unet_dist.collect.export import human_bytes, pinned_sources, ranked, relative
from unet_dist.collect.scan import RunFolder, find_runs, list_tree
from unet_dist.config import StorageConfig
from unet_dist.errors import StorageError, UserError
from unet_dist.runs import checkpoint_dir_epoch
from unet_dist.storage import Location, Removal, bucket_versioning, remove_tree, resolve

DEFAULT_KEEP_BEST = 3
TERMINAL = frozenset({"finished", "early_stopped", "invalid"})
"""Run statuses nothing resumes (``train --name`` extends a finished run, so its snapshot is rewritten, not ignored)."""


@dataclass(frozen=True)
class Item:
    """One checkpoint folder: where, whose, how big, and why it is kept or deleted."""

    uri: str
    run: str
    epoch: int
    bytes: int
    complete: bool
    reason: str


@dataclass
class GcPlan:
    """What gc keeps and deletes under ``storage``. After :func:`collect_garbage` (``deleted``): ``removed`` names
    the folders really gone, ``failed`` the others (``{"uri", "why"}``: refused, or only hidden by delete markers)."""

    storage: str
    policy: dict[str, Any]
    keep: list[Item] = field(default_factory=list)
    delete: list[Item] = field(default_factory=list)
    deleted: bool = False
    removed: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        """Bytes the plan frees (dry run), or really freed (after the deletions)."""
        gone = set(self.removed)
        return sum(i.bytes for i in self.delete if not self.deleted or i.uri in gone)

    @property
    def bytes_kept(self) -> int:
        return sum(i.bytes for i in self.keep)

    @property
    def digest(self) -> str:
        """12 hex digits naming what this plan deletes (storage, policy and every folder with its size)."""
        body = [self.storage, sorted(self.policy.items()), sorted((i.uri, i.bytes, i.complete) for i in self.delete)]
        return hashlib.sha256(json.dumps(body, default=str).encode()).hexdigest()[:12]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "dry_run": not self.deleted, "bytes_freed": self.bytes_freed,
                           "bytes_kept": self.bytes_kept, "digest": self.digest})

    @property
    def verb(self) -> str:
        return "deleted" if self.deleted else "would delete"

    def to_table(self) -> Any:
        """The checkpoints deleted (or to delete) with their reasons; a failed deletion is marked NOT DELETED."""
        from rich.table import Table

        count = len(self.removed) if self.deleted else len(self.delete)
        table = Table(title=f"{self.verb} {count} checkpoints under {self.storage}")
        for col in ("run", "checkpoint", "size", "why"):
            table.add_column(col, justify="right" if col == "size" else "left")
        failed = {f["uri"] for f in self.failed}
        for item in self.delete:
            why = f"NOT DELETED ({item.reason})" if item.uri in failed else item.reason
            table.add_row(item.run, item.uri.rsplit("/", 1)[-1], human_bytes(item.bytes), why)
        return table

    def summary_lines(self, plan_file: str | None) -> list[str]:
        """What was (or would be) freed and kept, the digest, failures, and on a dry run how to go on."""
        count = len(self.removed) if self.deleted else len(self.delete)
        kept = ", ".join(f"{n} {why}" for why, n in Counter(i.reason.split(" to ")[0] for i in self.keep).most_common())
        lines = [f"{self.verb} {count} checkpoints, {human_bytes(self.bytes_freed)} freed; kept {len(self.keep)} "
                 f"({human_bytes(self.bytes_kept)}: {kept or 'none'}); plan digest {self.digest}"]
        if self.failed:
            lines.append(f"{len(self.failed)} checkpoints could not be deleted (named above)")
        if not self.deleted and self.delete:
            then = (f"plan written to {plan_file}; `unet-dist gc {self.storage} --yes --plan {plan_file}` deletes "
                    "exactly it (or refuses if storage changed)") if plan_file else "run again with --yes to delete these"
            lines.append(f"dry run: nothing was deleted; {then}")
        return lines


def plan(root: str | Location, *, keep_best: int = DEFAULT_KEEP_BEST, keep_trial_best: bool = True,
         keep_latest: bool = True, campaigns: Sequence[str] | None = None,
         storage: StorageConfig | None = None) -> GcPlan:
    """Decide, for every checkpoint folder of the selected runs, whether it is kept (and why) or deleted (and why)."""
    if keep_best < 0:
        raise UserError(f"--keep-best must be 0 or more (got {keep_best})")
    root = resolve(root, storage)
    board = ranked(root, campaigns, storage)
    listing = list_tree(root)
    folders, _ = find_runs(listing)
    by_uri = {root.join(f.key).uri: f for f in folders}
    sizes = _sizes(root, listing.files)
    pins = pinned_sources(root)
    snaps = ray_snapshot.read_referenced(
        root, [f.key for f in folders if f"{f.key}/{ray_snapshot.SNAPSHOT_FILE}" in listing.files])
    top = {r["run_uri"] for r in [r for r in board.rows if r.get("best_checkpoint")][:keep_best]}
    policy = {"keep_best": keep_best, "keep_trial_best": keep_trial_best, "keep_latest": keep_latest,
              "campaigns": list(campaigns or []), "metric": board.metric, "mode": board.mode}
    out = GcPlan(root.uri, policy, notes=_notes(root))
    for row in board.rows:
        folder = by_uri.get(row["run_uri"])
        if folder is None:
            continue
        rules = _Rules(row, folder, pins, row["run_uri"] in top, keep_best, keep_trial_best, keep_latest)
        rules.snapshot(folder.key in snaps, snaps.get(folder.key))
        for name, complete in sorted(folder.checkpoints.items()):
            rel = f"{folder.key}/{name}"
            size = sizes.get(rel, 0)
            if root.is_s3 and size == 0 and not complete:
                continue  # an S3 "folder" left listed after its objects were deleted
            keep, reason = rules.decide(name, complete, rel)
            item = Item(root.join(rel).uri, _label(row), _epoch(name), size, complete, reason)
            (out.keep if keep else out.delete).append(item)
    return out


def collect_garbage(gc_plan: GcPlan, storage: StorageConfig | None = None,
                    on_item: Callable[[Item], None] | None = None, purge_versions: bool = False) -> GcPlan:
    """Delete every folder in ``gc_plan.delete`` (nothing else), run by run: first the run's Ray snapshot is
    rewritten without them, then each folder is removed and checked. ``on_item`` is called after each one."""
    root = resolve(gc_plan.storage, storage)
    by_run: dict[str, list[Item]] = {}
    for item in gc_plan.delete:
        by_run.setdefault(item.uri.rsplit("/", 1)[0], []).append(item)
    for run_uri, items in by_run.items():
        _delete_run(gc_plan, root, root.join(relative(run_uri, root)), items, purge_versions, on_item)
    gc_plan.deleted = True
    return gc_plan


def _delete_run(gc_plan: GcPlan, root: Location, run: Location, items: list[Item], purge_versions: bool,
                on_item: Callable[[Item], None] | None) -> None:
    try:
        ray_snapshot.drop(run, {posixpath.basename(i.uri) for i in items})
    except (StorageError, OSError, ValueError, KeyError, TypeError) as err:
        gc_plan.failed += [{"uri": i.uri, "why": f"Ray's snapshot could not be rewritten ({err}): not deleted"}
                           for i in items]
        return
    for item in items:
        try:
            why = _failure(remove_tree(root.join(relative(item.uri, root)), purge_versions))
        except (StorageError, OSError) as err:
            why = str(err)
        if why:
            gc_plan.failed.append({"uri": item.uri, "why": why})
        else:
            gc_plan.removed.append(item.uri)
        if on_item:
            on_item(item)


def _failure(done: Removal) -> str | None:
    """Why a folder was not really freed, or None."""
    if done.errors:
        return f"{len(done.errors)} file(s) refused, e.g. {done.errors[0]}"
    if done.hidden:
        return (f"versioned bucket: {done.hidden} file(s) only got a delete marker, their bytes are still stored "
                "(--purge-versions deletes every version)")
    return None


def _notes(root: Location) -> list[str]:
    status = bucket_versioning(root)
    if status:
        return [f"bucket versioning is {status} on {root.uri}: deleting only adds delete markers unless --purge-versions"]
    return []


def write_plan(gc_plan: GcPlan, path: str) -> None:
    """Save a (dry-run) plan as JSON, for ``--yes --plan FILE``."""
    Path(path).write_text(gc_plan.to_json() + "\n")


def verified_plan(root: str | Location, path: str, storage: StorageConfig | None = None) -> GcPlan:
    """The plan saved in ``path``, once a fresh plan of the storage root ``root`` (same policy) still deletes each of its folders
    with the same size; else a one-line UserError (nothing is deleted). New garbage is left for the next plan."""
    saved = _read_plan(path)
    root = resolve(root, storage)
    if root.uri != saved.storage:
        raise UserError(f"the plan in {path} is for {saved.storage}, not {root.uri}")
    policy = {k: saved.policy[k] for k in ("keep_best", "keep_trial_best", "keep_latest")}
    fresh = plan(root, **policy, campaigns=saved.policy.get("campaigns") or None, storage=storage)
    now = {i.uri: i for i in fresh.delete}
    changed = [i for i in saved.delete if (now.get(i.uri) is None or (now[i.uri].bytes, now[i.uri].complete)
                                           != (i.bytes, i.complete))]
    if changed:
        kept = {i.uri: i.reason for i in fresh.keep}
        first = changed[0]
        why = f"now kept ({kept[first.uri]})" if first.uri in kept else "changed size" if first.uri in now else "gone"
        raise UserError(f"storage changed since the plan in {path} (digest {saved.digest}): {first.uri} is {why}"
                        f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; nothing was deleted: "
                        "make and review a new plan (gc STORAGE --plan FILE)")
    saved.notes = fresh.notes
    return saved


def _read_plan(path: str) -> GcPlan:
    try:
        body = json.loads(Path(path).read_text())
        saved = GcPlan(body["storage"], body["policy"], [Item(**i) for i in body["keep"]],
                       [Item(**i) for i in body["delete"]])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"cannot read the gc plan {path} ({err}): write one with `unet-dist gc STORAGE --plan FILE`")
    if not body.get("dry_run") or body.get("digest") != saved.digest:
        raise UserError(f"{path} is not an unchanged dry-run plan of `unet-dist gc` (its digest does not match)")
    return saved


class _Rules:
    """The keep rules for one run's checkpoint folders."""

    def __init__(self, row: dict[str, Any], folder: RunFolder, pins: dict[str, str], top: bool, keep_best: int,
                 keep_trial_best: bool, keep_latest: bool) -> None:
        self.row, self.pins = row, pins
        self.best = posixpath.basename(row["best_checkpoint"]) if row.get("best_checkpoint") else None
        self.top, self.keep_best, self.keep_trial_best = top, keep_best, keep_trial_best
        self.running = row.get("status") == "running"
        self.resumable = row.get("status") not in TERMINAL
        self.last = int(row.get("epochs") or 0) - 1
        complete = [_epoch(n) for n, ok in folder.checkpoints.items() if ok]
        recorded = [e for e in complete if self.running or e <= self.last]
        self.newest = max(complete, default=None)
        self.latest = max(recorded, default=None) if keep_latest else None
        self.tracked: set[str] = set()
        self.unreadable = False

    def snapshot(self, present: bool, names: set[str] | None) -> None:
        """What Ray's snapshot references (``present`` but ``names`` None: it could not be parsed)."""
        self.tracked, self.unreadable = names or set(), present and names is None

    def decide(self, name: str, complete: bool, rel: str) -> tuple[bool, str]:
        epoch = _epoch(name)
        if rel in self.pins:
            return True, f"exported to {self.pins[rel]}"
        if self.unreadable:
            return True, "Ray's snapshot unreadable: run left alone"
        if self.resumable and name in self.tracked:
            return True, f"resumable ({self.row.get('status')}): in Ray's snapshot"
        if self.running and (self.newest is None or epoch >= self.newest):
            return True, "running: newest" if complete else "running: being written"
        if not complete:
            return False, "orphan: no complete COMPLETE marker"
        if name == self.best and self.top:
            return True, f"top {self.keep_best} by {self.row.get('metric')}"
        if name == self.best and self.keep_trial_best:
            return True, "run best"
        if epoch == self.latest:
            return True, "run latest"
        if not self.running and epoch > self.last:
            return False, f"orphan: after the run's last recorded epoch {self.last}"
        return False, "not best or latest"


def _label(row: dict[str, Any]) -> str:
    return f"{row['campaign']}/{row['trial']}" if row.get("campaign") else str(row["trial"])


def _epoch(name: str) -> int:
    epoch = checkpoint_dir_epoch(name)
    assert epoch is not None, name  # only checkpoint folders reach here
    return epoch


def _sizes(root: Location, files: dict[str, str]) -> Counter[str]:
    """Bytes per checkpoint folder (``RUN/epoch_NNNN``, ``CAMPAIGN/trials/ID/epoch_NNNN``): from the S3 listing's
    object sizes (its signatures start with the size), or a stat of each local file."""
    out: Counter[str] = Counter()
    for path, sig in files.items():
        parts = path.split("/")
        for depth in (1, 3):
            if len(parts) > depth + 1 and checkpoint_dir_epoch(parts[depth]) is not None:
                size = int(sig.split(":", 1)[0]) if root.is_s3 else os.path.getsize(os.path.join(root.path, path))
                out["/".join(parts[:depth + 1])] += size
    return out
