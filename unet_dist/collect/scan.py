"""Find every run on storage from one recursive listing (:func:`unet_dist.storage.list_pages` on S3).

A listing maps each file's path (relative to the storage root) to a signature (size, ETag and modification time
on S3; inode, ctime, size and mtime locally) that changes whenever the file does; :func:`find_runs` turns it into run folders (single runs
``<name>/run.json`` and campaign trials ``<campaign>/trials/<id>/run.json``) and the folders that are not runs,
without reading a file. Nothing here imports Ray or torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from unet_dist.runs import (CAMPAIGN_RECORD, DATASET_RECORD, MARKER_FILE, METRICS_FILE, RUN_RECORD, STATE_FILE, TRIALS_DIR,
                            checkpoint_dir_epoch)
from unet_dist.errors import StorageError
from unet_dist.storage import Location, list_pages

LEADERBOARD_DIR = "leaderboard"
# Top-level folders the collector and its siblings (export, gc, report, predict) write: never runs, never warned about.
RESERVED = frozenset({LEADERBOARD_DIR, "models", "exports", "reports", "predictions"})
_PRUNE = frozenset({"tensorboard", "tune"})
_SIGNED = frozenset({RUN_RECORD, METRICS_FILE})  # the only files whose changes change a row


@dataclass
class Listing:
    """Every file under a root (``files``: relative path -> signature: size, ETag and time on S3, inode, ctime, size
    and mtime locally, where files no row depends on get an empty one),
    the folders seen, and the requests it took (list pages on S3, directories scanned locally)."""

    files: dict[str, str] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)
    requests: int = 0


@dataclass
class RunFolder:
    """A folder holding a ``run.json``, as the listing shows it: no file read yet."""

    key: str
    campaign: str | None
    record_sig: str
    metrics_sig: str | None
    checkpoints: dict[str, bool]

    @property
    def signature(self) -> list[str | None]:
        return [self.record_sig, self.metrics_sig]


def list_tree(root: Location) -> Listing:
    """One recursive listing of ``root`` (paginated ListObjectsV2 on S3, a directory walk locally)."""
    if root.is_s3:
        return _list_s3(root)
    if not os.path.isdir(root.path):
        raise StorageError(f"{root.uri} is not a folder: check the storage path")
    return _list_local(root.path)


def _list_local(top: str) -> Listing:
    out = Listing()
    stack = [""]
    while stack:
        rel = stack.pop()
        out.requests += 1
        try:
            entries = list(os.scandir(os.path.join(top, rel) if rel else top))
        except FileNotFoundError:
            continue
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                out.dirs.add(path)
                if not (rel and e.name in _PRUNE):
                    stack.append(path)
            elif e.name in _SIGNED:
                out.files[path] = local_signature(e.stat())
            elif e.is_file():
                out.files[path] = ""
    return out


def local_signature(st: os.stat_result) -> str:
    """A local file's signature: inode and change time (which no copy or ``touch``/``os.utime`` can set back: ``rsync -a``
    and ``cp -p`` preserve the mtime, not the ctime), plus size and mtime."""
    return f"{st.st_ino}:{st.st_ctime_ns}:{st.st_size}:{st.st_mtime_ns}"


def _list_s3(root: Location) -> Listing:
    out = Listing()
    for page in list_pages(root):
        out.requests += 1
        for obj in page:
            rel = obj["rel"]
            if rel.endswith("/"):
                if rel.strip("/"):
                    out.dirs.add(rel.rstrip("/"))
            elif rel:
                out.files[rel] = f"{obj['Size']}:{obj.get('ETag', '').strip(chr(34))}:{obj.get('LastModified', '')}"
    return out


def find_runs(listing: Listing) -> tuple[list[RunFolder], list[tuple[str, str]]]:
    """Run folders (sorted by key) and ``(relative path, reason)`` for each top-level or trial entry that is not one."""
    tops: dict[str, set[str]] = {}
    for path in [*listing.files, *listing.dirs]:
        top, _, rest = path.partition("/")
        tops.setdefault(top, set())
        if rest:
            tops[top].add(rest)
    runs: list[RunFolder] = []
    skipped: list[tuple[str, str]] = []
    for top in sorted(tops):
        if top.startswith(("_", ".")) or top in RESERVED:
            continue
        children = tops[top]
        if not children and top in listing.files:
            skipped.append((top, "stray file, not a run or campaign folder"))
        elif RUN_RECORD in children:
            runs.append(_run_folder(listing, top, None))
        elif CAMPAIGN_RECORD in children or any(c.startswith(TRIALS_DIR + "/") for c in children):
            _campaign(listing, top, children, runs, skipped)
        elif DATASET_RECORD in children:
            continue
        elif not _has_files(listing, top, children):
            skipped.append((top, "empty folder"))
        else:
            skipped.append((top, "foreign folder: no run.json or campaign.json"))
    _index_checkpoints(listing, runs)
    return runs, skipped


def _campaign(listing: Listing, top: str, children: set[str], runs: list[RunFolder], skipped: list[tuple[str, str]]) -> None:
    trials: dict[str, set[str]] = {}
    for child in children:
        head, _, rest = child.partition("/")
        if head != TRIALS_DIR or not rest:
            continue
        trial, _, inner = rest.partition("/")
        trials.setdefault(trial, set())
        if inner:
            trials[trial].add(inner)
    for trial in sorted(trials):
        key = f"{top}/{TRIALS_DIR}/{trial}"
        inner = trials[trial]
        if trial.startswith(("_", ".")):
            continue
        if not inner and key in listing.files:
            skipped.append((key, "stray file in trials/, not a trial folder"))
        elif RUN_RECORD in inner:
            runs.append(_run_folder(listing, key, top))
        elif not _has_files(listing, key, inner):
            skipped.append((key, "empty trial folder"))
        else:
            skipped.append((key, "trial folder without run.json (not started, or not a trial)"))


def _has_files(listing: Listing, key: str, children: set[str]) -> bool:
    return any(f"{key}/{c}" in listing.files for c in children)


def _run_folder(listing: Listing, key: str, campaign: str | None) -> RunFolder:
    files = listing.files
    return RunFolder(key, campaign, files[f"{key}/{RUN_RECORD}"], files.get(f"{key}/{METRICS_FILE}"), {})


def _index_checkpoints(listing: Listing, runs: list[RunFolder]) -> None:
    """Fill each run's ``checkpoints`` (``{epoch_NNNN: complete}``) from the listing in one pass over its paths.

    Complete means the ``COMPLETE`` marker (written last) and ``state.pt`` are both there; the sizes the marker
    records are not re-read (that costs a request per checkpoint; ``runs.is_complete`` does it for one).
    """
    by_key = {r.key: r for r in runs}
    seen: dict[tuple[str, str], set[str]] = {}
    for path in [*listing.files, *listing.dirs]:
        parts = path.split("/")
        for depth in (1, 3):
            if len(parts) > depth and checkpoint_dir_epoch(parts[depth]) is not None and "/".join(parts[:depth]) in by_key:
                names = seen.setdefault(("/".join(parts[:depth]), parts[depth]), set())
                if len(parts) == depth + 2:
                    names.add(parts[depth + 1])
    for (key, epoch), names in seen.items():
        by_key[key].checkpoints[epoch] = {MARKER_FILE, STATE_FILE} <= names


