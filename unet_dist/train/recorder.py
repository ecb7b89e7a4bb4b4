"""Rank 0's recorder: everything a run writes to storage besides Ray's own checkpoint bookkeeping.

Grouped by hook, as Ray Train groups its callbacks: :meth:`Recorder.on_start` (events, progress),
:meth:`Recorder.on_step` (progress for live views), :meth:`Recorder.on_epoch_end` (metrics, events,
TensorBoard, the run record and the checkpoint folder) and :meth:`Recorder.close`. Other ranks get a
:class:`NullRecorder` with the same hooks.
"""

from __future__ import annotations

import math
import posixpath
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from unet_dist.config import Config
from unet_dist.runs import (EVENTS_FILE, MARKER_FILE, METRICS_FILE, TENSORBOARD_DIR, MarkerError, RunDir, check_file_name,
                            parse_marker, progress_fields, scalar_metrics)
from unet_dist.storage import Location
from unet_dist import checkpoint as ckpt


class NullRecorder:
    """The recorder of ranks other than 0: every hook does nothing."""

    def on_start(self, **event: Any) -> None: ...

    def on_step(self, **fields: Any) -> None: ...

    def on_epoch_end(self, row: dict[str, Any], shown: list[torch.Tensor], state: dict[str, Any]) -> str | None:
        return None

    def after_report(self) -> None: ...

    def close(self) -> None: ...


class Recorder(NullRecorder):
    """Writes metrics.jsonl, events.jsonl, progress.json, TensorBoard, run.json and checkpoint folders."""

    def __init__(self, run: RunDir, cfg: Config, extra_state: dict[str, Any], steps_per_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.cfg, self.extra_state, self.steps_per_epoch = run, cfg, extra_state, steps_per_epoch
        self._tb_dir = Path(tempfile.mkdtemp(prefix="unet-tb-"))
        self._writer = SummaryWriter(str(self._tb_dir))
        self._uploaded: dict[Path, int] = {}

    def on_start(self, **event: Any) -> None:
        self.run.truncate_metrics(event["start_epoch"])
        self.run.append(EVENTS_FILE, {"event": "start", **event, "time": time.time()})
        self.run.progress(epoch=event["start_epoch"], step=0, phase="start", epochs=self.cfg.train.epochs)

    def on_step(self, **fields: Any) -> None:
        self.run.progress(phase="train", epochs=self.cfg.train.epochs, **fields)

    def on_epoch_end(self, row: dict[str, Any], shown: list[torch.Tensor], state: dict[str, Any]) -> str | None:
        """Record one epoch; returns a local checkpoint folder for ``ray.train.report`` (the caller removes it)."""
        epoch = row["epoch"]
        log_tensorboard(self._writer, row, shown, epoch)
        upload_dir(self._tb_dir, self.run.loc / TENSORBOARD_DIR, self._uploaded)
        self.run.append(METRICS_FILE, row)
        self.run.append(EVENTS_FILE, {"event": "epoch_end", "epoch": epoch, "time": time.time(), "world_size": row["world_size"]})
        self.run.progress(epoch=epoch, step=self.steps_per_epoch, steps_per_epoch=self.steps_per_epoch, phase="epoch_end",
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

    def close(self) -> None:
        self._writer.close()
        upload_dir(self._tb_dir, self.run.loc / TENSORBOARD_DIR, self._uploaded)
        shutil.rmtree(self._tb_dir, ignore_errors=True)


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
