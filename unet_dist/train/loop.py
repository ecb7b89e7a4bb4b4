"""The per-worker training loop run by Ray Train (``train_loop_per_worker``).

Each worker builds the model, wraps it for DDP, resumes from the newest complete checkpoint, and per
epoch trains, validates, all-reduces metrics and reports. Rank 0 alone writes the run files:
``metrics.jsonl`` (one line per epoch), ``events.jsonl`` (each worker-group start and each completed epoch,
never rewritten), ``progress.json`` (for the driver's live view), TensorBoard events and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import posixpath
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from unet_dist.config import Config
from unet_dist.storage import Location, resolve
from unet_dist.train import checkpoint as ckpt
from unet_dist.train.losses import create_loss, remap_ignore
from unet_dist.train.metrics import EpochMeter, predict_labels
from unet_dist.train.optim import create_optimizer, create_scheduler, seek_epoch, steps_per_epoch

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
PROGRESS_FILE = "progress.json"
FAULT_ENV = "UNET_DIST_FAULT"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order and augmentation seed of one epoch: the same on every attempt."""
    return seed * 1_000_003 + epoch


@dataclass(frozen=True)
class Fault:
    """Test-only hook: ``UNET_DIST_FAULT="rank=1,epoch=2,step=1"`` kills that worker once."""

    rank: int
    epoch: int
    step: int

    @classmethod
    def parse(cls, text: str | None) -> "Fault | None":
        if not text:
            return None
        kv = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        return cls(int(kv.get("rank", 0)), int(kv.get("epoch", 0)), int(kv.get("step", 0)))

    def maybe_die(self, run: Location, rank: int, epoch: int, step: int) -> None:
        if (rank, epoch, step) != (self.rank, self.epoch, self.step):
            return
        marker = run / f".fault-r{rank}-e{epoch}-s{step}"
        if marker.exists():
            return
        marker.write_text("fired")
        os._exit(1)


class RunFiles:
    """Rank 0's writer for the run directory's JSON-lines files (read-modify-write: S3 has no append)."""

    def __init__(self, run: Location) -> None:
        self.run = run

    def read_lines(self, name: str) -> list[dict[str, Any]]:
        loc = self.run / name
        if not loc.exists():
            return []
        return [json.loads(line) for line in loc.read_text().splitlines() if line.strip()]

    def _write_lines(self, name: str, rows: list[dict[str, Any]]) -> None:
        (self.run / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def truncate_metrics(self, start_epoch: int) -> None:
        """Drop metrics of epochs that will be trained again (after a crash before their checkpoint)."""
        rows = self.read_lines(METRICS_FILE)
        keep = [r for r in rows if r["epoch"] < start_epoch]
        if len(keep) != len(rows):
            self._write_lines(METRICS_FILE, keep)

    def append(self, name: str, row: dict[str, Any]) -> None:
        self._write_lines(name, self.read_lines(name) + [row])

    def progress(self, **fields: Any) -> None:
        (self.run / PROGRESS_FILE).write_text(json.dumps({"time": time.time(), **fields}))


def scalar_metrics(row: dict[str, Any]) -> dict[str, int | float]:
    """The numeric fields of a metrics row: what Ray Train reports and checkpoints and summaries carry."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float))}


def _synced_batches(it: Iterator[dict[str, Any]], distributed: bool) -> Iterator[dict[str, Any]]:
    """Yield batches while every rank still has one, so DDP ranks always take the same number of steps."""
    while True:
        batch = next(it, None)
        if distributed:
            flag = torch.tensor([0 if batch is None else 1], dtype=torch.int64)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            if int(flag) == 0:
                return
        elif batch is None:
            return
        yield batch


def _amp(device: torch.device, enabled: bool) -> tuple[Any, torch.dtype | None]:
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype


def overlay(image: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RGB ``3 x H x W`` in [0, 1]: the image in gray, true positives green, false positives red, false negatives blue.

    "Positive" is any non-background class (id > 0); ignored pixels (target < 0) stay gray.
    """
    gray = image[:1].float()
    gray = (gray - gray.min()) / (gray.max() - gray.min()).clamp(min=1e-6)
    rgb = gray.repeat(3, 1, 1) * 0.6
    valid = target >= 0
    p, t = (pred > 0) & valid, (target > 0) & valid
    for ch, m in ((1, p & t), (0, p & ~t), (2, ~p & t)):
        rgb[ch][m] = 1.0
    return rgb.clamp(0, 1)


def _resume_source(run: Location, cfg: Config) -> tuple[str | None, bool]:
    """``(uri, full)``: the newest complete checkpoint among Ray's and the run directory's (full state),
    else ``train.resume_from`` (weights only: a new run's schedule starts at epoch 0), else ``(None, False)``.

    Ray may hand back the checkpoint before the last reported one (that report was not yet polled
    when a worker died); the run directory still holds the newer complete folder, so no reported epoch
    is trained twice.
    """
    import ray.train

    candidates: list[tuple[int, Location]] = list(ckpt.complete_checkpoints(run))
    given = ray.train.get_checkpoint()
    if given is not None:
        loc = run / posixpath.basename(given.path.rstrip("/"))
        epoch = ckpt.checkpoint_epoch(loc)
        if epoch is not None and ckpt.is_complete(loc):
            candidates.append((epoch, loc))
    if candidates:
        return max(candidates, key=lambda t: t[0])[1].uri, True
    if cfg.train.resume_from:
        return cfg.train.resume_from, False
    return None, False


def _agree(value: Any, distributed: bool) -> Any:
    """Rank 0's value on every rank."""
    if not distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def quiet_ray_logs() -> None:
    """Silence Ray Train/Data per-report INFO lines; the driver's live view and metrics.jsonl carry them."""
    import logging

    for name in ("ray.train", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _worker_nodes(distributed: bool) -> list[str]:
    """Every rank's Ray node id (rank order), so a run records where its workers were placed."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if not distributed:
        return [node]
    nodes: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(nodes, node)
    return nodes


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: cfg (Config), spec (PipelineSpec), run_uri, train_rows, class_names, fingerprint, fault."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from unet_dist.data.pipeline import iter_train_batches, iter_val_batches
    from unet_dist.models import create_unet

    cfg: Config = config["cfg"]
    tcfg = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(cfg.resources.torch_threads or max(1, round(cfg.resources.cpus_per_worker))))
    run = resolve(config["run_uri"], cfg.storage)
    files = RunFiles(run)
    fault = Fault.parse(config.get("fault"))
    class_names = config.get("class_names")
    spec = config["spec"]
    distributed = world > 1

    quiet_ray_logs()
    seed_everything(tcfg.seed)
    device = ray.train.torch.get_device()
    model = create_unet(cfg.model)
    resumed_from, full = _agree(_resume_source(run, cfg) if rank == 0 else None, distributed)
    state = ckpt.load_checkpoint(resumed_from, cfg.storage) if resumed_from else None
    if state is not None:
        model.load_state_dict(state["model"])
    channels_last = tcfg.channels_last and device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    core = getattr(model, "module", model)
    optimizer = create_optimizer(core.parameters(), tcfg)
    spe = steps_per_epoch(config["train_rows"], cfg, world)
    scheduler = create_scheduler(optimizer, tcfg, spe)
    autocast, amp_dtype = _amp(device, tcfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss_fn = create_loss(tcfg.loss, cfg.model.num_classes, tcfg.class_weights).to(device)
    start_epoch = 0
    if state is not None and full:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch = int(state["epoch"]) + 1

    writer = tb_dir = None
    uploaded: dict[Path, int] = {}
    nodes = _worker_nodes(distributed)
    if rank == 0:
        files.truncate_metrics(start_epoch)
        from torch.utils.tensorboard import SummaryWriter

        tb_dir = tempfile.mkdtemp(prefix="unet-tb-")
        writer = SummaryWriter(tb_dir)
        files.append(EVENTS_FILE, {"event": "start", "start_epoch": start_epoch, "resumed_from": resumed_from,
                                   "full_state": full, "time": time.time(), "world_size": world,
                                   "nodes": nodes})
        files.progress(epoch=start_epoch, step=0, phase="start", epochs=tcfg.epochs)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    step_unit = tcfg.scheduler_interval == "step"

    for epoch in range(start_epoch, tcfg.epochs):
        seed_everything(epoch_seed(tcfg.seed, epoch) + 7919 * rank)
        seek_epoch(scheduler, epoch, spe, tcfg)
        model.train()
        meter = EpochMeter(cfg.model.num_classes, class_names)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        micro = 0
        batches = iter_train_batches(train_shard, cfg.data.batch_size, epoch_seed(tcfg.seed, epoch), spec)
        for step, batch in enumerate(_synced_batches(iter(batches), distributed)):
            if fault is not None:
                fault.maybe_die(run, rank, epoch, step)
            x = torch.as_tensor(batch["image"]).to(device, non_blocking=True)
            y = remap_ignore(torch.as_tensor(batch["mask"]).to(device, non_blocking=True).long(), tcfg.ignore_index)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            micro += 1
            sync_now = micro % tcfg.accumulate == 0
            no_sync = model.no_sync if (distributed and not sync_now and hasattr(model, "no_sync")) else contextlib.nullcontext
            with no_sync():
                with autocast():
                    logits = model(x)
                    loss = loss_fn(logits.float(), y)
                scaler.scale(loss / tcfg.accumulate).backward()
            if sync_now:
                _optimizer_step(optimizer, scaler, core, tcfg.grad_clip)
                if step_unit:
                    scheduler.step()
            meter.update(logits, y, loss.item())
            if rank == 0 and step % tcfg.progress_every == 0:
                files.progress(epoch=epoch, step=step, phase="train", loss=loss.item(), epochs=tcfg.epochs,
                               steps_per_epoch=spe, lr=optimizer.param_groups[0]["lr"],
                               images_per_s=float(meter.sums[1]) * world / max(1e-9, time.perf_counter() - t0))
        if micro % tcfg.accumulate:
            _optimizer_step(optimizer, scaler, core, tcfg.grad_clip)
            if step_unit:
                scheduler.step()
        if not step_unit:
            scheduler.step()
        train_time = time.perf_counter() - t0
        train_m = meter.compute()

        if distributed:
            sync_buffers(core)
        val_m, shown = validate(core, iter_val_batches(val_shard, cfg.data.val_batch_size, spec, rank, world), loss_fn, cfg,
                                device, class_names, autocast=autocast, n_images=tcfg.log_images if rank == 0 else 0)
        epoch_time = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "train_loss": train_m["loss"], "train_iou": train_m["iou"], "train_mean_iou": train_m["mean_iou"],
            "train_dice": train_m["dice"], "train_pixel_acc": train_m["pixel_acc"],
            "val_loss": val_m["loss"], "val_iou": val_m["iou"], "val_mean_iou": val_m["mean_iou"],
            "val_dice": val_m["dice"], "val_pixel_acc": val_m["pixel_acc"],
            "val_per_class_iou": val_m["per_class_iou"], "val_per_class_dice": val_m["per_class_dice"],
            "val_confusion_matrix": val_m["confusion_matrix"],
            "train_images": train_m["images"], "val_images": val_m["images"],
            "images_per_s": train_m["images"] / max(train_time, 1e-9), "epoch_time_s": epoch_time,
            "world_size": world,
        }
        scalars = scalar_metrics(row)
        checkpoint = None
        tmp = None
        if rank == 0:
            _log_tensorboard(writer, row, shown, epoch)
            _upload_dir(Path(tb_dir), run / "tensorboard", uploaded)
            files.append(METRICS_FILE, row)
            files.append(EVENTS_FILE, {"event": "epoch_end", "epoch": epoch, "time": time.time(), "world_size": world})
            files.progress(epoch=epoch, step=spe, steps_per_epoch=spe,
                           phase="epoch_end", epochs=tcfg.epochs, loss=row["train_loss"], val_iou=row["val_iou"],
                           images_per_s=row["images_per_s"])
            tmp = tempfile.mkdtemp(prefix="unet-ckpt-")
            ckpt.save_checkpoint(tmp, {
                "model": {k: v.detach().cpu() for k, v in core.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "epoch": epoch,
                "config": cfg.to_dict(),
                "fingerprint": config.get("fingerprint"),
                "class_names": class_names,
                "metrics": scalars,
            })
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report(scalars, checkpoint=checkpoint, checkpoint_dir_name=ckpt.checkpoint_dir_name(epoch))
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if writer is not None:
        writer.close()
        _upload_dir(Path(tb_dir), run / "tensorboard", uploaded)
        shutil.rmtree(tb_dir, ignore_errors=True)


def sync_buffers(model: torch.nn.Module) -> None:
    """Broadcast rank 0's buffers (BatchNorm running stats) so every rank validates the model rank 0 checkpoints.

    DDP broadcasts buffers at the start of each training forward, so after the last step every rank
    holds running stats updated from its own batch only.
    """
    for buf in model.buffers():
        torch.distributed.broadcast(buf.data, src=0)


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, model: torch.nn.Module, clip: float | None) -> None:
    if clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Any, loss_fn: torch.nn.Module, cfg: Config, device: torch.device,
             class_names: list[str] | None, autocast: Any = contextlib.nullcontext,
             n_images: int = 0) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Metrics of ``model`` over ``batches`` (all-reduced under DDP) and up to ``n_images`` overlays.

    The one evaluation pass: the training loop's per-epoch validation and ``unet-dist evaluate``.
    """
    model.eval()
    meter = EpochMeter(cfg.model.num_classes, class_names)
    shown: list[torch.Tensor] = []
    for batch in batches:
        x = torch.as_tensor(batch["image"]).to(device)
        y = remap_ignore(torch.as_tensor(batch["mask"]).to(device).long(), cfg.train.ignore_index)
        with autocast():
            logits = model(x).float()
        meter.update(logits, y, loss_fn(logits, y).item())
        if len(shown) < n_images:
            pred = predict_labels(logits).cpu()
            for i in range(min(n_images - len(shown), x.shape[0])):
                shown.append(overlay(x[i].cpu(), pred[i], y[i].cpu()))
    return meter.compute(), shown


def _log_tensorboard(writer: Any, row: dict[str, Any], shown: list[torch.Tensor], epoch: int) -> None:
    for key, value in row.items():
        if isinstance(value, (int, float)) and key != "epoch" and math.isfinite(value):
            split, _, name = key.partition("_")
            tag = f"{split}/{name}" if split in ("train", "val") else f"run/{key}"
            writer.add_scalar(tag, value, epoch)
    for name, value in (row.get("val_per_class_iou") or {}).items():
        if value is not None:
            writer.add_scalar(f"val_iou_per_class/{name}", value, epoch)
    if shown:
        writer.add_images("val/overlay", torch.stack(shown), epoch)
    writer.flush()


def _upload_dir(local: Path, dest: Location, uploaded: dict[Path, int]) -> None:
    """Copy new or grown TensorBoard files to storage (whole files: S3 has no append); ``uploaded``
    remembers the size each file had when last copied."""
    for f in sorted(local.rglob("*")):
        if f.is_file() and uploaded.get(f) != f.stat().st_size:
            data = f.read_bytes()
            (dest / str(f.relative_to(local))).write_bytes(data)
            uploaded[f] = len(data)
