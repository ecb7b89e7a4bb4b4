"""Checkpoint files: one ``state.pt`` of tensors and plain Python values, plus a ``COMPLETE`` marker.

A checkpoint directory (``<run>/epoch_NNNN/``, see :mod:`unet_dist.runs`) holds ``state.pt`` (model,
optimizer, scheduler, scaler, epoch, config, dataset fingerprint, metrics, and the ``inference`` block:
what a model needs to run on new images without the dataset) and, written last, ``COMPLETE``: a JSON list
of file sizes. A folder whose sizes do not match its marker (an upload cut short) is never resumed from.
Everything loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from unet_dist.config import StorageConfig
from unet_dist.errors import StorageError, UserError
from unet_dist.models.weights import safe_load
from unet_dist.runs import MARKER_FILE, STATE_FILE, marker_text
from unet_dist.storage import Location, resolve


class CheckpointError(UserError):
    """A checkpoint file that cannot be used: missing, truncated, not ours, or refused by the safe loader."""


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` and then the completeness marker into a local directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(state, d / STATE_FILE)
    (d / MARKER_FILE).write_text(marker_text({STATE_FILE: (d / STATE_FILE).stat().st_size}, state.get("epoch")))
    return d


def state_location(uri: str | Location, storage: StorageConfig | None = None) -> Location:
    """The state file of a checkpoint: ``uri`` itself when it is a file (any name), else ``uri/state.pt``."""
    loc = resolve(uri, storage)
    return loc / STATE_FILE if loc.isdir() else loc


def load_checkpoint(uri: str | Path | Location, storage: StorageConfig | None = None, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint folder or state file from a local path or ``s3://`` URI, safely (``weights_only=True``).

    Raises :class:`CheckpointError` (one line: which file and why) for a missing, truncated, foreign or
    unsafe file; nothing in the file is executed.
    """
    loc = state_location(uri if isinstance(uri, Location) else str(uri), storage)
    if not loc.exists():
        raise CheckpointError(f"no checkpoint at {loc.uri}: pass a checkpoint folder (RUN/epoch_NNNN) or its {STATE_FILE}")
    try:
        state = safe_load(loc.read_bytes(), map_location)
    except StorageError:
        raise
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"refused to load {loc.uri}: it holds objects other than tensors and plain values "
                              f"({_first_line(err)}), so it is not a unet-dist checkpoint or was tampered with; "
                              "nothing in it was run") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(f"cannot read checkpoint {loc.uri}: the file is truncated or corrupt "
                              f"({type(err).__name__}); use another checkpoint of the run") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{loc.uri} is not a unet-dist checkpoint (no model state); pass RUN/epoch_NNNN")
    return state


def _first_line(err: Exception) -> str:
    """The safe loader's reason, without its advice to turn weights_only off."""
    for line in str(err).splitlines():
        line = line.strip()
        if line.startswith(("WeightsUnpickler error:", "Unsupported global")):
            return line.removeprefix("WeightsUnpickler error: ").split(". ")[0]
    return type(err).__name__
