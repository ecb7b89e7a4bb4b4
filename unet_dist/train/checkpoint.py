"""Checkpoint files: one ``state.pt`` of tensors and plain Python values, plus a ``COMPLETE`` marker.

A checkpoint directory is ``<run>/epoch_NNNN/`` holding ``state.pt`` (model, optimizer, scheduler,
scaler, epoch, config, dataset fingerprint, metrics) and, written last, ``COMPLETE``: a JSON list of
file sizes. A folder whose sizes do not match its marker (an upload cut short) is never resumed from.
Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch

from unet_dist.config import StorageConfig
from unet_dist.errors import StorageError
from unet_dist.storage import Location, resolve

STATE_FILE = "state.pt"
MARKER_FILE = "COMPLETE"
_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


def checkpoint_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` and then the completeness marker into a local directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(state, d / STATE_FILE)
    sizes = {STATE_FILE: (d / STATE_FILE).stat().st_size}
    (d / MARKER_FILE).write_text(json.dumps({"files": sizes, "epoch": state.get("epoch")}))
    return d


def _state_loc(uri: str | Location, storage: StorageConfig | None) -> Location:
    loc = resolve(uri, storage)
    if loc.name == STATE_FILE:
        return loc
    return loc / STATE_FILE


def load_checkpoint(uri: str | Path | Location, storage: StorageConfig | None = None, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint directory (or its ``state.pt``) from a local path or ``s3://`` URI."""
    loc = _state_loc(uri if isinstance(uri, Location) else str(uri), storage)
    if not loc.exists():
        raise StorageError(f"no checkpoint at {loc.uri}: pass a checkpoint folder (RUN/epoch_NNNN) holding {STATE_FILE}")
    return torch.load(io.BytesIO(loc.read_bytes()), map_location=map_location, weights_only=True)


def is_complete(loc: Location) -> bool:
    """True when the marker exists and every file it lists has the recorded size."""
    marker = loc / MARKER_FILE
    try:
        if not marker.exists():
            return False
        files = json.loads(marker.read_text())["files"]
        return all(loc.fs.size((loc / name).path) == size for name, size in files.items())
    except (StorageError, OSError, ValueError, KeyError):
        return False


def complete_checkpoints(run: Location) -> list[tuple[int, Location]]:
    """``(epoch, location)`` of every complete checkpoint folder in a run directory, oldest first."""
    out = []
    for child in run.ls():
        m = _EPOCH_DIR.match(child.name)
        if m and is_complete(child):
            out.append((int(m.group(1)), child))
    return sorted(out, key=lambda t: t[0])


def checkpoint_epoch(loc: Location) -> int | None:
    """Epoch recorded in a checkpoint's marker (None if it has none)."""
    try:
        return json.loads((loc / MARKER_FILE).read_text()).get("epoch")
    except (StorageError, OSError, ValueError):
        return None
