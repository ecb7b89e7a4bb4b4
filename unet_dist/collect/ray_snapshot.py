"""Ray Train's ``RUN/checkpoint_manager_snapshot.json``: which checkpoint folders it references, and the same
snapshot without some of them (what ``unet-dist gc`` writes before it deletes a finished run's checkpoints).

The format is Ray Train V2's ``_CheckpointManagerState`` (``ray.train.v2._internal.execution.checkpoint.
checkpoint_manager``): ``checkpoint_results`` (each with ``checkpoint_dir_name``) paired one to one with
``checkpoint_report_indices``, ``latest_checkpoint_result`` (which must be one of the results), and
``pending_training_results`` paired with ``pending_validation_specs``. On restore Ray raises
``CheckpointManagerInitializationError`` when a result's folder is missing, so a run can resume (or be extended)
only while every folder its snapshot references exists. Plain JSON here: no Ray import.
"""

from __future__ import annotations

import json
from typing import Any

from unet_dist.storage import Location, read_many

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
_NAME_LISTS = ("validated_checkpoint_dir_names", "timed_out_validation_checkpoint_dir_names",
               "failed_validation_checkpoint_dir_names")


def referenced(state: dict[str, Any]) -> set[str]:
    """The checkpoint folder names a snapshot references (kept results, the latest, pending ones)."""
    entries = [*state["checkpoint_results"], *state.get("pending_training_results", []),
               state.get("latest_checkpoint_result")]
    return {str(e["checkpoint_dir_name"]) for e in entries if e}


def read_referenced(root: Location, run_keys: list[str]) -> dict[str, set[str] | None]:
    """``{run key: referenced folder names}`` for runs (relative to ``root``) that have a snapshot; ``None`` for one
    that cannot be read or parsed (gc then keeps all of that run's checkpoints)."""
    raw = read_many(root, [f"{k}/{SNAPSHOT_FILE}" for k in run_keys])
    out: dict[str, set[str] | None] = {}
    for key in run_keys:
        data = raw.get(f"{key}/{SNAPSHOT_FILE}")
        try:
            out[key] = referenced(json.loads(data)) if isinstance(data, bytes) else None
        except (ValueError, KeyError, TypeError, AttributeError):
            out[key] = None
    return out


def without(state: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """``state`` with every entry of the folders ``names`` dropped, pairs kept together; a dropped latest moves to
    the remaining result with the highest report index (none left: no latest)."""
    pairs = [(r, i) for r, i in zip(state["checkpoint_results"], state["checkpoint_report_indices"])
             if r["checkpoint_dir_name"] not in names]
    pending = [(r, v) for r, v in zip(state.get("pending_training_results", []), state.get("pending_validation_specs", []))
               if r["checkpoint_dir_name"] not in names]
    latest = state.get("latest_checkpoint_result")
    if latest and latest["checkpoint_dir_name"] in names:
        latest = max(pairs, key=lambda p: p[1])[0] if pairs else None
    out = {**state, "checkpoint_results": [r for r, _ in pairs], "checkpoint_report_indices": [i for _, i in pairs],
           "latest_checkpoint_result": latest}
    if "pending_training_results" in state:
        out.update(pending_training_results=[r for r, _ in pending], pending_validation_specs=[v for _, v in pending])
    for key in _NAME_LISTS:
        if key in state:
            out[key] = [n for n in state[key] if n not in names]
    return out


def drop(run: Location, names: set[str]) -> bool:
    """Rewrite ``run``'s snapshot without ``names`` (one whole write: an atomic rename locally, one PUT on S3);
    False when it has no snapshot or references none of them (then nothing is written)."""
    loc = run / SNAPSHOT_FILE
    if not loc.exists():
        return False
    state = json.loads(loc.read_text())
    new = without(state, names)
    if new == state:
        return False
    loc.write_text(json.dumps(new))
    return True
