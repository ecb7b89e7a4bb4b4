"""Export (the model hub): copy the best checkpoints of a storage to a model store, each with a model card.

A model store ``DEST/`` (local or ``s3://``) holds::

    <model>/state.pt          # the checkpoint's state file, byte for byte (never re-pickled) ...
    <model>/COMPLETE          # ... its marker (file sizes and SHA-256s, epoch), copied after it ...
    <model>/model.safetensors # the model's weights alone (a third of state.pt, loadable without pickle) ...
    <model>/model.json        # ... and the card, written last: a folder without one is an export cut short
    champion/alias.json       # {"model": "<model>", ...}: the best model of the latest export

``<model>`` is ``<campaign>-<trial>-epoch_NNNN`` (``<run>-epoch_NNNN`` for a single run): the same source checkpoint
always lands in the same folder, so exporting again copies nothing twice while its content (each file's size and
SHA-256) is the same (a retrained run is copied again; a different source that would take a
taken name gets ``-<hash of its URI>`` appended). The card holds the run's config (no credentials), the searched
values, the metrics of the exported epoch (per-class IoU and Dice, confusion matrix), the monitored metric, the
dataset (URI, manifest, fingerprint), the code version, the creation time, the source checkpoint URI and each
file's size and SHA-256.

S3 has no symlinks, so ``champion`` is an alias file, not a link or a copy: one small write, made after every
model's card, so it never names a partly copied model; it names a sibling folder, so a store keeps working when it
is moved or synced elsewhere. Every checkpoint reference (``evaluate``, ``predict``, ``train.resume_from``,
``model.weights``) accepts ``DEST/<model>`` and ``DEST/champion`` (see :func:`unet_dist.runs.state_location`).

Each export also pins its source in ``STORAGE/exports/`` so ``unet-dist gc`` never deletes an exported checkpoint;
the pin lives until the model is removed on purpose (:func:`remove_export`, ``unet-dist export --remove NAME``).
Ranking is the leaderboard's (:func:`unet_dist.collect.leaderboard.collect`); no Ray. The one checkpoint loaded is
the copied state file, safely (``weights_only=True``), to write its weights as safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from unet_dist import __version__
from unet_dist.collect.leaderboard import Leaderboard, collect, sort_value
from unet_dist.config import StorageConfig
from unet_dist.errors import StorageError, UserError
from unet_dist.runs import (ALIAS_FILE, CAMPAIGN_RECORD, CHAMPION, MARKER_FILE, METRICS_FILE, MODEL_CARD, RUN_RECORD,
                            STATE_FILE, WEIGHTS_FILE, MarkerError, RunDir, content_digest, is_complete, is_finite,
                            now_iso, parse_marker)
from unet_dist.storage import Location, check_writable, remove_tree, resolve

PINS_DIR = "exports"
"""``STORAGE/exports/<id>.json``: one pin per exported model, naming its source checkpoint (relative to STORAGE)."""
CARD_SCHEMA = 1
_SECRET_KEYS = ("access_key_id", "secret_access_key", "session_token", "password", "token")
_CHUNK = 8 << 20


@dataclass
class ExportedModel:
    """One model folder written (or found unchanged) by :func:`export`."""

    rank: int
    name: str
    uri: str
    source: str
    metric: str
    value: float | None
    params: dict[str, Any]
    status: str
    bytes: int
    copied: bool


@dataclass
class ExportResult:
    """What :func:`export` did: the models best first, the champion alias and what was copied."""

    storage: str
    dest: str
    metric: str
    mode: str
    champion: str | None
    models: list[ExportedModel] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_copied(self) -> int:
        return sum(m.bytes for m in self.models if m.copied)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "bytes_copied": self.bytes_copied}, default=str)

    def to_table(self) -> Any:
        """The exported models as a rich table, best first."""
        from rich.table import Table

        table = Table(title=f"exported to {self.dest} by {self.metric} ({self.mode})")
        for col in ("#", "model", self.metric, "searched", "status", "size", ""):
            table.add_column(col, justify="right" if col in ("#", self.metric, "size") else "left")
        for m in self.models:
            searched = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in m.params.items())
            table.add_row(str(m.rank), m.name, "-" if m.value is None else f"{m.value:.4f}", searched, m.status,
                          human_bytes(m.bytes), "copied" if m.copied else "unchanged")
        return table

    def summary(self) -> str:
        copied = sum(m.copied for m in self.models)
        return (f"champion -> {self.champion}  ({self.dest.rstrip('/')}/champion); {copied} copied "
                f"({human_bytes(self.bytes_copied)}), {len(self.models) - copied} unchanged")


def human_bytes(n: int) -> str:
    """``12.3 MB`` from 100 kB up, else ``n B``."""
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n:,} B"


def is_inside(inner: Location, outer: Location) -> bool:
    """Whether ``inner`` is ``outer`` or below it (same scheme and bucket)."""
    a, b = inner.uri.rstrip("/"), outer.uri.rstrip("/")
    return a == b or a.startswith(b + "/")


def ranked(root: Location, campaigns: Sequence[str] | None = None, storage: StorageConfig | None = None) -> Leaderboard:
    """The leaderboard of the storage root ``root`` (not written), limited to ``campaigns`` (campaign or single-run names).

    Raises a one-line UserError for a storage that does not exist or holds no run, and for an unknown name.
    """
    if not root.exists():
        raise StorageError(f"{root.uri} does not exist: pass the storage that `unet-dist train`/`tune` wrote to")
    board = collect(root, storage=storage, write=False)
    if not board.rows:
        raise UserError(f"no runs or campaigns under {root.uri} (expected NAME/run.json or NAME/{CAMPAIGN_RECORD}): "
                        "pass the storage that `unet-dist train`/`tune` wrote to")
    names = sorted({r["campaign"] or r["trial"] for r in board.rows})
    unknown = sorted(set(campaigns or ()) - set(names))
    if unknown:
        raise UserError(f"unknown campaign {', '.join(unknown)} in {root.uri}: it holds {', '.join(names)}")
    if campaigns:
        rows = [r for r in board.rows if (r["campaign"] or r["trial"]) in set(campaigns)]
        board = Leaderboard(rows, board.metric, board.mode, board.skipped, board.counts, board.uri, board.stats)
    return board


def relative(loc_uri: str, root: Location) -> str:
    """``loc_uri`` relative to ``root`` (the key of a run or checkpoint inside a storage)."""
    return loc_uri[len(root.uri.rstrip("/")) + 1:]


def model_name(row: dict[str, Any]) -> str:
    """``<campaign>-<trial>-epoch_NNNN`` or ``<run>-epoch_NNNN``: stable for a source checkpoint."""
    base = f"{row['campaign']}-{row['trial']}" if row.get("campaign") else str(row["trial"])
    return f"{base}-{posixpath.basename(row['best_checkpoint'].rstrip('/'))}"


def check_dest(dest: Location, root: Location) -> None:
    """A model store may not be inside the storage root it exports from, nor a run or campaign folder."""
    if is_inside(dest, root):
        raise UserError(f"DEST {dest.uri} is inside STORAGE {root.uri}: export to a separate model store "
                        "(gc and the leaderboard own everything under STORAGE)")
    for record in (RUN_RECORD, CAMPAIGN_RECORD):
        if (dest / record).exists():
            raise UserError(f"DEST {dest.uri} is a run or campaign folder (it holds {record}): choose a model store folder")


def export(root: str | Location, dest: str | Location, *, top: int = 1, campaigns: Sequence[str] | None = None,
           storage: StorageConfig | None = None, on_bytes: Callable[[int, int], None] | None = None) -> ExportResult:
    """Copy the best ``top`` checkpoints under the storage root ``root`` (ranked by the leaderboard) to the model store ``dest``.

    ``on_bytes(done, total)`` follows the copy. Re-exporting the same source is a no-op for its folder.
    """
    if top < 1:
        raise UserError(f"--top must be at least 1 (got {top})")
    root, store = resolve(root, storage), resolve(dest, storage)
    board = ranked(root, campaigns, storage)
    check_dest(store, root)
    rows = [r for r in board.rows if r.get("best_checkpoint") and _rankable(r, board.metric)][:top]
    if not rows:
        raise UserError(f"no run under {root.uri} has a complete best checkpoint to export "
                        f"({board.summary()}); train longer or check `unet-dist collect`")
    check_writable(store)
    plans = [_plan(row, root, store) for row in rows]
    total = sum(p["bytes"] for p in plans if not p["unchanged"])
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if on_bytes:
            on_bytes(done[0], total)

    result = ExportResult(root.uri, store.uri, board.metric, board.mode, None)
    if len(rows) < top:
        result.warnings.append(f"only {len(rows)} of the runs under {root.uri} have a complete best checkpoint "
                               f"(--top {top})")
    for plan in plans:
        if not plan["unchanged"]:
            _write_model(plan, advance)
        row = plan["row"]
        result.models.append(ExportedModel(row["rank"], plan["name"], plan["folder"].uri, plan["source"].uri, board.metric,
                                           row.get("best_value"), _params(row), row["status"], plan["bytes"],
                                           not plan["unchanged"]))
        result.warnings += _pin(root, plan)
    result.champion = _crown(store, plans[0], board)
    return result


def _rankable(row: dict[str, Any], metric: str) -> bool:
    """A row whose ranked value is missing (ranked last) or finite: a diverged run (NaN) is never exported."""
    value = sort_value(row, metric)
    return value is None or is_finite(value)


def _crown(store: Location, best: dict[str, Any], board: Leaderboard) -> str:
    """Point ``DEST/champion`` at ``best`` (after its card exists); left as it is when it already does. The alias
    holds the model's content digest, so it is rewritten when a model of the same name got new weights."""
    alias = store / CHAMPION / ALIAS_FILE
    card = _read_json(best["folder"] / MODEL_CARD) or {}
    body = {"model": best["name"], "source": best["source"].uri, "metric": board.metric, "mode": board.mode,
            "value": best["row"].get("best_value"), "sha256": content_digest(card.get("files") or {})}
    old = _read_json(alias) or {}
    if {k: old.get(k) for k in body} != body:
        alias.write_text(json.dumps({**body, "updated_at": now_iso()}, indent=2) + "\n")
    return best["name"]


def _params(row: dict[str, Any]) -> dict[str, Any]:
    """The searched values of a leaderboard row (its dotted config-key columns)."""
    return {k: v for k, v in row.items() if "." in k and not k.startswith("iou.")}


def _plan(row: dict[str, Any], root: Location, store: Location) -> dict[str, Any]:
    """Where a row's checkpoint goes, whether it is already there (same source and the same content: every file's
    size and SHA-256 as the source's marker records them, or as hashed from the source for a marker without them),
    and its size. A marker listing a name that is not a plain file name is refused (a one-line UserError)."""
    source = root.join(relative(row["best_checkpoint"], root))
    name = model_name(row)
    folder = store / name
    card = _read_json(folder / MODEL_CARD)
    if card is not None and card.get("source") != source.uri:
        name = f"{name}-{hashlib.sha256(source.uri.encode()).hexdigest()[:8]}"
        folder = store / name
        card = _read_json(folder / MODEL_CARD)
    marker_bytes = (source / MARKER_FILE).read_bytes()
    try:
        marker = parse_marker(marker_bytes)
    except MarkerError as err:
        raise UserError(f"cannot export checkpoint {source.uri}: {err}; nothing was exported") from None
    files, digests = marker["files"], marker["sha256"] or {}
    unchanged = False
    if card is not None and card.get("source") == source.uri and is_complete(folder):
        if set(digests) != set(files):  # an older marker, without SHA-256s: hash the source
            digests = {n: _hash(source / n) for n in files}
        unchanged = (card.get("files") == {n: {"bytes": files[n], "sha256": digests[n]} for n in files}
                     and WEIGHTS_FILE in (card.get("weights") or {}))  # an older export gains its weights file
    return {"row": row, "name": name, "folder": folder, "source": source, "files": files,
            "sha256": marker["sha256"] or {}, "marker": marker_bytes, "bytes": sum(files.values()), "unchanged": unchanged}


def _read_json(loc: Location) -> dict[str, Any] | None:
    try:
        return json.loads(loc.read_text()) if loc.exists() else None
    except (ValueError, StorageError):
        return None


def _write_model(plan: dict[str, Any], advance: Callable[[int], None]) -> None:
    """State file(s), then the marker, then the card: a reader sees a model only when all of it is there."""
    folder, source = plan["folder"], plan["source"]
    (folder / MODEL_CARD).rm(recursive=False)
    digests = {name: _copy(source / name, folder / name, advance) for name in plan["files"]}
    changed = sorted(n for n, d in plan["sha256"].items() if digests.get(n) != d)
    if changed:
        raise StorageError(f"copy of {source.uri} to {folder.uri}: {', '.join(changed)} does not match the SHA-256 in "
                           f"its {MARKER_FILE} (the checkpoint changed during the copy, or is corrupt): export again")
    (folder / MARKER_FILE).write_bytes(plan["marker"])
    if not is_complete(folder):
        raise StorageError(f"copy of {source.uri} to {folder.uri} does not match its {MARKER_FILE}: export again")
    card = model_card(plan, {n: {"bytes": plan["files"][n], "sha256": d} for n, d in digests.items()})
    card["weights"] = _write_weights(folder)
    (folder / MODEL_CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")


def _write_weights(folder: Location) -> dict[str, dict[str, Any]]:
    """The model's weights alone as ``model.safetensors`` (no optimiser state, and no pickle to load: any tool reads
    it with ``safetensors.torch.load_file``), from the state file just copied (loaded with ``weights_only=True``)."""
    from safetensors.torch import save

    from unet_dist.models.weights import safe_load

    state = safe_load((folder / STATE_FILE).read_bytes())
    tensors = {k: v.detach().contiguous().clone() for k, v in state["model"].items()}
    data = save(tensors, metadata={"format": "pt", "source": STATE_FILE, "epoch": str(state.get("epoch"))})
    (folder / WEIGHTS_FILE).write_bytes(data)
    return {WEIGHTS_FILE: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "tensors": len(tensors)}}


def _hash(loc: Location) -> str:
    """The SHA-256 of a file on storage, streamed."""
    digest = hashlib.sha256()
    with loc.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(src: Location, dst: Location, advance: Callable[[int], None]) -> str:
    """Stream ``src`` to ``dst`` (locally through a temp name then a rename), returning its SHA-256."""
    digest = hashlib.sha256()
    target = dst if dst.is_s3 else dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    with src.open("rb") as fin, target.open("wb") as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            digest.update(chunk)
            advance(len(chunk))
    if target is not dst:
        os.replace(target.path, dst.path)
    return digest.hexdigest()


def model_card(plan: dict[str, Any], files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The card of an exported model, from its run's record and metrics (never from the checkpoint)."""
    row, source = plan["row"], plan["source"]
    run = RunDir(source.parent)
    record = run.read_record() or {}
    epoch = row.get("best_epoch")
    metrics = next((r for r in reversed(run.read_lines(METRICS_FILE)) if r.get("epoch") == epoch), {})
    dataset = dict(record.get("dataset") or {})
    if dataset.get("uri"):
        dataset["manifest"] = f"{dataset['uri'].rstrip('/')}/dataset.json"
    return {
        "schema": CARD_SCHEMA, "kind": "model", "name": plan["name"], "created_at": now_iso(),
        "source": source.uri, "source_recorded": record.get("best_checkpoint"), "run": run.uri,
        "campaign": row.get("campaign"), "trial": row.get("trial"), "run_kind": record.get("kind"),
        "status": record.get("status"), "epoch": epoch,
        "monitor": {"metric": row.get("metric"), "mode": row.get("mode"), "value": row.get("best_value")},
        "params": record.get("params") or _params(row), "metrics": metrics,
        "config": scrub(record.get("config") or {}), "dataset": dataset,
        "code_version": record.get("code_version"), "exported_by": f"unet-dist {__version__}", "files": files,
    }


def scrub(value: Any) -> Any:
    """``value`` without credential fields, at any depth (records never hold them; a card must not either)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in _SECRET_KEYS}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def _pin_loc(root: Location, model_uri: str) -> Location:
    """``STORAGE/exports/<id>.json``, the pin of the model at ``model_uri``."""
    return root / PINS_DIR / f"{hashlib.sha256(model_uri.encode()).hexdigest()[:16]}.json"


def _pin(root: Location, plan: dict[str, Any]) -> list[str]:
    """Record in STORAGE that ``plan``'s source is exported (gc keeps it); a warning if STORAGE is read-only."""
    pin = _pin_loc(root, plan["folder"].uri)
    body = {"model": plan["folder"].uri, "source": relative(plan["source"].uri, root), "pinned_at": now_iso()}
    try:
        if (_read_json(pin) or {}).get("source") != body["source"]:
            pin.write_text(json.dumps(body) + "\n")
    except (StorageError, OSError) as err:
        return [f"could not pin {plan['source'].uri} in {root.uri}/{PINS_DIR} ({err}): gc may delete it"]
    return []


def pinned_sources(root: Location) -> dict[str, str]:
    """``{source checkpoint (relative to STORAGE): model URI}`` of every export pin. A pin lives until
    :func:`remove_export` removes it: whether its model store is visible from here (another machine or mount, a
    re-export under way) does not matter."""
    out: dict[str, str] = {}
    for pin in (root / PINS_DIR).ls():
        body = _read_json(pin)
        if body and "source" in body:
            out[body["source"]] = body.get("model", pin.uri)
    return out


def remove_export(root: str | Location, dest: str | Location, name: str,
                  storage: StorageConfig | None = None) -> dict[str, Any]:
    """Remove the model ``DEST/NAME`` on purpose: its folder, then (when it names it) the champion alias, then its
    pin in ``STORAGE/exports/`` (last: gc keeps the source until the model is really gone)."""
    root, store = resolve(root, storage), resolve(dest, storage)
    if not name or "/" in name or name in (".", "..", CHAMPION):
        raise UserError(f"--remove takes a model name in {store.uri} (a folder name, not {name!r})")
    folder, pin = store / name, _pin_loc(root, (store / name).uri)
    source = (_read_json(pin) or {}).get("source")
    if not folder.exists() and not pin.exists():
        raise UserError(f"no exported model {name} in {store.uri} and no pin for it in {root.uri}/{PINS_DIR}")
    gone = remove_tree(folder)
    if not gone.freed:
        raise StorageError(f"could not remove {folder.uri} ({(gone.errors or ['versioned bucket: delete markers only'])[0]}); "
                           "its pin is kept")
    alias = store / CHAMPION / ALIAS_FILE
    champion = (_read_json(alias) or {}).get("model") == name
    if champion:
        alias.rm(recursive=False)
    pin.rm(recursive=False)
    return {"model": folder.uri, "source": source, "champion_removed": champion, "files_removed": gone.removed}
