"""Retention (``unet-dist gc``): keep the checkpoints worth keeping, delete the rest, dry run first.

Only checkpoint folders (``epoch_NNNN/``) of runs and trials the leaderboard reads are ever deleted; records,
metrics, TensorBoard logs, Ray Tune's state, model stores and folders that are not runs are never touched. Kept:

- the best checkpoint of the ``keep_best`` best runs or trials (ranked as the leaderboard ranks them);
- each run's best checkpoint (``keep_trial_best``) and/or its newest complete one (``keep_latest``);
- every checkpoint an export pinned (``STORAGE/exports/``, see :mod:`unet_dist.collect.export`) while its model exists;
- a ``running`` run's newest complete checkpoint and anything newer (being written).

Everything else goes, orphans included: folders without a complete ``COMPLETE`` marker (an upload or a crash cut
short) and checkpoints of epochs after the last one a stopped run recorded (ASHA-stopped trials train on briefly).
A run whose record cannot be read is left alone. The plan is computed from one listing; ``--yes`` deletes exactly it.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from unet_dist.collect.export import pinned_sources, ranked, relative
from unet_dist.collect.scan import RunFolder, find_runs, list_tree
from unet_dist.config import StorageConfig
from unet_dist.errors import UserError
from unet_dist.storage import Location, resolve

DEFAULT_KEEP_BEST = 3
_EPOCH = re.compile(r"^epoch_\d+$")


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
    """What gc keeps and deletes under ``storage`` (``deleted``: whether the deletions were carried out)."""

    storage: str
    policy: dict[str, Any]
    keep: list[Item] = field(default_factory=list)
    delete: list[Item] = field(default_factory=list)
    deleted: bool = False

    @property
    def bytes_freed(self) -> int:
        return sum(i.bytes for i in self.delete)

    @property
    def bytes_kept(self) -> int:
        return sum(i.bytes for i in self.keep)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "dry_run": not self.deleted, "bytes_freed": self.bytes_freed,
                           "bytes_kept": self.bytes_kept})


def plan(storage: str | Location, *, keep_best: int = DEFAULT_KEEP_BEST, keep_trial_best: bool = True,
         keep_latest: bool = False, campaigns: Sequence[str] | None = None,
         storage_cfg: StorageConfig | None = None) -> GcPlan:
    """Decide, for every checkpoint folder of the selected runs, whether it is kept (and why) or deleted (and why)."""
    if keep_best < 0:
        raise UserError(f"--keep-best must be 0 or more (got {keep_best})")
    root = resolve(storage, storage_cfg)
    board = ranked(root, campaigns, storage_cfg)
    listing = list_tree(root)
    folders, _ = find_runs(listing)
    by_uri = {root.join(f.key).uri: f for f in folders}
    sizes = _sizes(root, listing.files)
    pins = pinned_sources(root)
    top = {r["run_uri"] for r in [r for r in board.rows if r.get("best_checkpoint")][:keep_best]}
    policy = {"keep_best": keep_best, "keep_trial_best": keep_trial_best, "keep_latest": keep_latest,
              "campaigns": list(campaigns or []), "metric": board.metric, "mode": board.mode}
    out = GcPlan(root.uri, policy)
    for row in board.rows:
        folder = by_uri.get(row["run_uri"])
        if folder is None:
            continue
        rules = _Rules(row, folder, pins, row["run_uri"] in top, keep_best, keep_trial_best, keep_latest)
        for name, complete in sorted(folder.checkpoints.items()):
            rel = f"{folder.key}/{name}"
            size = sizes.get(rel, 0)
            if root.is_s3 and size == 0 and not complete:
                continue  # an S3 "folder" left listed after its objects were deleted
            keep, reason = rules.decide(name, complete, rel)
            item = Item(root.join(rel).uri, _label(row), _epoch(name), size, complete, reason)
            (out.keep if keep else out.delete).append(item)
    return out


def collect_garbage(gc_plan: GcPlan, storage_cfg: StorageConfig | None = None,
                    on_item: Callable[[Item], None] | None = None) -> GcPlan:
    """Delete every folder in ``gc_plan.delete`` (nothing else); ``on_item`` is called after each one."""
    root = resolve(gc_plan.storage, storage_cfg)
    for item in gc_plan.delete:
        root.join(relative(item.uri, root)).rm(recursive=True)
        if on_item:
            on_item(item)
    gc_plan.deleted = True
    return gc_plan


class _Rules:
    """The keep rules for one run's checkpoint folders."""

    def __init__(self, row: dict[str, Any], folder: RunFolder, pins: dict[str, str], top: bool, keep_best: int,
                 keep_trial_best: bool, keep_latest: bool) -> None:
        self.row, self.pins = row, pins
        self.best = posixpath.basename(row["best_checkpoint"]) if row.get("best_checkpoint") else None
        self.top, self.keep_best, self.keep_trial_best = top, keep_best, keep_trial_best
        self.running = row.get("status") == "running"
        self.last = int(row.get("epochs") or 0) - 1
        complete = [_epoch(n) for n, ok in folder.checkpoints.items() if ok]
        recorded = [e for e in complete if self.running or e <= self.last]
        self.newest = max(complete, default=None)
        self.latest = max(recorded, default=None) if keep_latest else None

    def decide(self, name: str, complete: bool, rel: str) -> tuple[bool, str]:
        epoch = _epoch(name)
        if rel in self.pins:
            return True, f"exported to {self.pins[rel]}"
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
    return int(name.split("_", 1)[1])


def _sizes(root: Location, files: dict[str, str]) -> Counter[str]:
    """Bytes per checkpoint folder (``RUN/epoch_NNNN``, ``CAMPAIGN/trials/ID/epoch_NNNN``): from the S3 listing's
    object sizes (its signatures start with the size), or a stat of each local file."""
    out: Counter[str] = Counter()
    for path, sig in files.items():
        parts = path.split("/")
        for depth in (1, 3):
            if len(parts) > depth + 1 and _EPOCH.match(parts[depth]):
                size = int(sig.split(":", 1)[0]) if root.is_s3 else os.path.getsize(os.path.join(root.path, path))
                out["/".join(parts[:depth + 1])] += size
    return out
