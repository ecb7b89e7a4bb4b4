"""Checkpoint files: one ``state.pt`` of tensors and plain Python values, plus a ``COMPLETE`` marker.

A checkpoint directory (``<run>/epoch_NNNN/``, see :mod:`unet_dist.runs`) holds ``state.pt`` (model,
optimizer, scheduler, scaler, epoch, config, dataset fingerprint, metrics, and the ``inference`` block:
what a model needs to run on new images without the dataset) and, written last, ``COMPLETE``: the JSON
file sizes and SHA-256s (plain file names only, see :func:`unet_dist.runs.file_name_problem`). A folder whose sizes
do not match its marker (an upload cut short) is never resumed from.
Everything loads with ``torch.load(weights_only=True)``.

A checkpoint *reference* (what ``evaluate``, ``predict``, ``train.resume_from`` and ``model.weights`` accept) is
any of: a state file of any name, a checkpoint folder (``RUN/epoch_NNNN``), an exported model folder
(``STORE/<model>/``: ``state.pt``, ``COMPLETE``, ``model.json``) or a model-store alias (``STORE/champion/``, whose
``alias.json`` names a model folder beside it). :func:`state_location` turns a reference into its state file by
reading only JSON; nothing is unpickled or executed on the way.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from unet_dist.config import StorageConfig
from unet_dist.errors import StorageError
from unet_dist.models.weights import safe_load
from unet_dist.runs import CHAMPION, MARKER_FILE, STATE_FILE, CheckpointError, marker_text, state_location
from unet_dist.storage import Location


def save_checkpoint(directory: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` and then the completeness marker (its size and SHA-256) into a local directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.save(state, d / STATE_FILE)
    (d / MARKER_FILE).write_text(marker_text({STATE_FILE: (d / STATE_FILE).stat().st_size}, state.get("epoch"),
                                             {STATE_FILE: file_sha256(d / STATE_FILE)}))
    return d


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a local file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_checkpoint(uri: str | Path | Location, storage: StorageConfig | None = None, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint reference (see :func:`state_location`) from a local path or ``s3://`` URI, safely
    (``weights_only=True``).

    Raises :class:`CheckpointError` (one line: which file and why) for a missing, truncated, foreign or
    unsafe file; nothing in the file is executed.
    """
    loc = state_location(uri if isinstance(uri, Location) else str(uri), storage)
    if not loc.exists():
        raise CheckpointError(f"no checkpoint at {loc.uri}: pass a checkpoint folder (RUN/epoch_NNNN), its {STATE_FILE}, "
                              f"an exported model folder or STORE/{CHAMPION}")
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
