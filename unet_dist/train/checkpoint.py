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
import json
from pathlib import Path
from typing import Any

import torch

from unet_dist.config import StorageConfig
from unet_dist.errors import StorageError, UserError
from unet_dist.models.weights import safe_load
from unet_dist.runs import MARKER_FILE, STATE_FILE, MarkerError, is_complete, marker_text, read_marker
from unet_dist.storage import Location, resolve


class CheckpointError(UserError):
    """A checkpoint file that cannot be used: missing, truncated, not ours, or refused by the safe loader."""


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


MODEL_CARD = "model.json"
"""An exported model folder's card (written last by ``unet-dist export``)."""
ALIAS_FILE = "alias.json"
"""A model-store alias folder's file: ``{"model": "<folder name beside the alias>"}``."""
CHAMPION = "champion"
"""The alias ``unet-dist export`` points at its best model."""
_MAX_ALIAS_HOPS = 4


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
