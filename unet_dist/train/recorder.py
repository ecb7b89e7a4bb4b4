"""What each worker's loop calls as it trains: its recorders, grouped by hook as Ray Train groups its callbacks.

A recorder spec is any picklable object with ``create(ctx) -> WorkerRecorder | None`` (a recorder class's
``create`` classmethod, or an instance); every worker builds its recorders from the specs in its loop config, so
``fit(cfg, recorders=[...])`` adds one without touching the loop. Every run has the run record
(:class:`RunRecorder`: metrics, events, progress, run.json and the checkpoint folder), TensorBoard
(:class:`TensorBoardRecorder`), MLflow when tracking is on (:class:`MlflowRecorder`) and, in tests, the fault hook
(:mod:`unet_dist.train.fault`). Hooks:
:meth:`~WorkerRecorder.on_start`, :meth:`~WorkerRecorder.before_step`, :meth:`~WorkerRecorder.on_step`,
:meth:`~WorkerRecorder.on_epoch_end`, :meth:`~WorkerRecorder.after_report`, :meth:`~WorkerRecorder.close`.
"""

from __future__ import annotations

import math
import posixpath
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import torch

from unet_dist.config import Config
from unet_dist.runs import (EVENTS_FILE, MARKER_FILE, METRICS_FILE, TENSORBOARD_DIR, MarkerError, RunDir, check_file_name,
                            epochs_done, parse_marker, progress_fields, scalar_metrics)
from unet_dist.storage import Location
from unet_dist import checkpoint as ckpt


@dataclass(frozen=True)
class WorkerContext:
    """What a recorder knows of its worker: rank and world size, the run, its config, what rank 0 adds to each
    checkpoint (fingerprint, class names, inference block) and the steps of one epoch."""

    rank: int
    world: int
    run: RunDir
    cfg: Config
    extra_state: dict[str, Any]
    steps_per_epoch: int


class WorkerRecorder:
    """A recorder's hooks; each does nothing unless overridden."""

    @classmethod
    def create(cls, ctx: WorkerContext) -> "WorkerRecorder | None":
        """This recorder on ``ctx``'s worker, or None where it does not run (here: rank 0 only)."""
        return cls(ctx) if ctx.rank == 0 else None  # type: ignore[call-arg]

    def on_start(self, **event: Any) -> None:
        """Once, before the first epoch: start_epoch, start_pass, resumed_from, full_state, world_size, nodes, backend."""

    def before_step(self, epoch: int, step: int) -> None:
        """Before every training step."""

    def on_step(self, **fields: Any) -> None:
        """Every ``train.progress_every`` steps: epoch, step, loss, lr, images_per_s."""

    def on_epoch_end(self, row: dict[str, Any], shown: list[torch.Tensor], state: dict[str, Any]) -> str | None:
        """The epoch's metrics row, overlays and training state (rank 0's; empty on other ranks); a recorder that
        writes the epoch's checkpoint returns its local folder (for ``ray.train.report``) and implements
        ``upload_checkpoint``."""
        return None

    def after_report(self) -> None:
        """After the epoch's ``ray.train.report`` (with its checkpoint, if any, on storage)."""

    def close(self) -> None:
        """After the last epoch."""


class RecorderSpec(Protocol):
    def create(self, ctx: WorkerContext) -> WorkerRecorder | None: ...


class Recorders(WorkerRecorder):
    """A worker's recorders as one: each hook calls every recorder in order."""

    def __init__(self, recorders: Iterable[WorkerRecorder]) -> None:
        self.recorders = list(recorders)
        self._checkpointer: WorkerRecorder | None = None

    @classmethod
    def build(cls, specs: Sequence[RecorderSpec], ctx: WorkerContext) -> "Recorders":
        return cls(r for spec in specs if (r := spec.create(ctx)) is not None)

    def on_start(self, **event: Any) -> None:
        for r in self.recorders:
            r.on_start(**event)

    def before_step(self, epoch: int, step: int) -> None:
        for r in self.recorders:
            r.before_step(epoch, step)

    def on_step(self, **fields: Any) -> None:
        for r in self.recorders:
            r.on_step(**fields)

    def on_epoch_end(self, row: dict[str, Any], shown: list[torch.Tensor], state: dict[str, Any]) -> str | None:
        """Every recorder's hook; the checkpoint folder is the first one a recorder returned."""
        folder, self._checkpointer = None, None
        for r in self.recorders:
            local = r.on_epoch_end(row, shown, state)
            if local is not None and folder is None:
                folder, self._checkpointer = local, r
        return folder

    def upload_checkpoint(self, checkpoint: Any, dir_name: str) -> Any:
        assert self._checkpointer is not None, "upload_checkpoint without a checkpoint folder"
        return self._checkpointer.upload_checkpoint(checkpoint, dir_name)  # type: ignore[attr-defined]

    def after_report(self) -> None:
        for r in self.recorders:
            r.after_report()

    def close(self) -> None:
        for r in self.recorders:
            r.close()


class RunRecorder(WorkerRecorder):
    """Rank 0: metrics.jsonl, events.jsonl, progress.json, run.json and the checkpoint folders."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.run, self.cfg, self.extra_state, self.steps_per_epoch = ctx.run, ctx.cfg, ctx.extra_state, ctx.steps_per_epoch

    def on_start(self, **event: Any) -> None:
        self.run.truncate_metrics(event["start_epoch"])
        self.run.append(EVENTS_FILE, {"event": "start", **event, "time": time.time()})
        self.run.progress(epoch=event["start_pass"], step=0, phase="start", epochs=self.cfg.train.epochs)

    def on_step(self, **fields: Any) -> None:
        self.run.progress(phase="train", epochs=self.cfg.train.epochs, **fields)

    def on_epoch_end(self, row: dict[str, Any], shown: list[torch.Tensor], state: dict[str, Any]) -> str | None:
        """Record one epoch; returns a local checkpoint folder for ``ray.train.report`` (the caller removes it)."""
        epoch = row["epoch"]
        self.run.append(METRICS_FILE, row)
        self.run.append(EVENTS_FILE, {"event": "epoch_end", "epoch": epoch, "time": time.time(), "world_size": row["world_size"]})
        self.run.progress(epoch=math.ceil(epochs_done(row)) - 1, step=self.steps_per_epoch, steps_per_epoch=self.steps_per_epoch, phase="epoch_end",
                          epochs=self.cfg.train.epochs, loss=row["train_loss"], val_iou=row["val_iou"],
                          monitor=self.cfg.train.monitor, monitor_value=row.get(self.cfg.train.monitor),
                          images_per_s=row["images_per_s"])
        tmp = tempfile.mkdtemp(prefix="unet-ckpt-")
        ckpt.save_checkpoint(tmp, {**state, **self.extra_state, "config": self.cfg.to_dict(), "metrics": scalar_metrics(row)})
        return tmp

    def upload_checkpoint(self, checkpoint: Any, dir_name: str) -> Any:
        """Ray Train's ``checkpoint_upload_fn``: the folder goes to storage through :mod:`unet_dist.storage` (retried
        through outages), the old marker removed first and the new one written last, so a cut upload is never
        counted; a failed upload raises (Ray's own pyarrow copy can drop it without an error)."""
        import ray.train

        dest = self.run.loc / dir_name
        files = sorted((f for f in Path(checkpoint.path).rglob("*") if not f.is_dir()), key=lambda f: f.name == MARKER_FILE)
        for f in files:  # a checkpoint folder holds plain files only: refused before anything is written
            check_file_name(str(f.relative_to(checkpoint.path)))
            if f.is_symlink():
                raise MarkerError(f"checkpoint file {f.name!r} is a link, not a file")
        parse_marker((Path(checkpoint.path) / MARKER_FILE).read_bytes())
        (dest / MARKER_FILE).rm(recursive=False)
        for f in files:
            (dest / f.name).write_bytes(f.read_bytes())
        storage = ray.train.get_context().get_storage()
        return ray.train.Checkpoint(posixpath.join(storage.experiment_fs_path, dir_name), filesystem=storage.storage_filesystem)

    def after_report(self) -> None:
        """Once Ray has the epoch's checkpoint on storage: bring the run record up to date."""
        rows = self.run.metrics()
        self.run.update_record(**progress_fields(rows, self.run.best(self.cfg.train.monitor, self.cfg.train.monitor_mode, rows)))


class TensorBoardRecorder(WorkerRecorder):
    """Rank 0: scalars, per-class IoU and overlays in TensorBoard event files, copied to the run's ``tensorboard/``
    after every epoch."""

    def __init__(self, ctx: WorkerContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dest = ctx.run.loc / TENSORBOARD_DIR
        self._tb_dir = Path(tempfile.mkdtemp(prefix="unet-tb-"))
        self._writer = SummaryWriter(str(self._tb_dir))
        self._uploaded: dict[Path, int] = {}

    def on_epoch_end(self, row: dict[str, Any], shown: list[torch.Tensor], state: dict[str, Any]) -> str | None:
        log_tensorboard(self._writer, row, shown, row["epoch"])
        upload_dir(self._tb_dir, self.dest, self._uploaded)
        return None

    def close(self) -> None:
        self._writer.close()
        upload_dir(self._tb_dir, self.dest, self._uploaded)
        shutil.rmtree(self._tb_dir, ignore_errors=True)


class MlflowRecorder(WorkerRecorder):
    """Rank 0, when ``tracking.mlflow_uri`` is set: the run (or trial, nested under its campaign) mirrored into MLflow
    after each epoch's record is on storage (:class:`unet_dist.tracking.Tracker`: a server that is down costs one
    warning in this worker's log, never the run; the driver's sync at the end logs what it missed)."""

    @classmethod
    def create(cls, ctx: WorkerContext) -> "WorkerRecorder | None":
        return cls(ctx) if ctx.rank == 0 and ctx.cfg.tracking.mlflow_uri else None

    def __init__(self, ctx: WorkerContext) -> None:
        from unet_dist.tracking import Tracker

        self.run, self.tracker = ctx.run, Tracker.of(ctx.cfg)

    def after_report(self) -> None:
        self.tracker.run(self.run)


def log_tensorboard(writer: Any, row: dict[str, Any], shown: list[torch.Tensor], epoch: int) -> None:
    """Scalars, per-class IoU and one overlay image per shown sample (samples may differ in size)."""
    for key, value in row.items():
        if isinstance(value, (int, float)) and key != "epoch" and math.isfinite(value):
            split, _, name = key.partition("_")
            tag = f"{split}/{name}" if split in ("train", "val") else f"run/{key}"
            writer.add_scalar(tag, value, epoch)
    for name, value in (row.get("val_per_class_iou") or {}).items():
        if value is not None:
            writer.add_scalar(f"val_iou_per_class/{name}", value, epoch)
    for i, image in enumerate(shown):
        writer.add_image(f"val/overlay/{i}", image, epoch)
    writer.flush()


def write_hparams(run: RunDir, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """A trial's searched values and final metrics as TensorBoard hparams (its own event file under ``tensorboard/``),
    so ``tensorboard --logdir CAMPAIGN/trials`` shows the HParams table and parallel-coordinates view."""
    from torch.utils.tensorboard import SummaryWriter

    tmp = Path(tempfile.mkdtemp(prefix="unet-hp-"))
    try:
        with SummaryWriter(str(tmp)) as writer:
            shown = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
            values = {f"hparam/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            writer.add_hparams(shown, values or {"hparam/none": 0.0}, run_name="hparams")
        upload_dir(tmp, run.loc / TENSORBOARD_DIR, {})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def upload_dir(local: Path, dest: Location, uploaded: dict[Path, int]) -> None:
    """Copy new or grown files to storage (whole files: S3 has no append); ``uploaded`` remembers the size
    each file had when last copied."""
    for f in sorted(local.rglob("*")):
        if f.is_file() and uploaded.get(f) != f.stat().st_size:
            data = f.read_bytes()
            (dest / str(f.relative_to(local))).write_bytes(data)
            uploaded[f] = len(data)
