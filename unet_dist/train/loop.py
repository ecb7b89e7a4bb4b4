"""The per-worker training loop run by Ray Train (``train_loop_per_worker``), in parts.

:class:`~unet_dist.train.state.TrainState` holds what a worker trains (with save and resume); the epoch
phases here (:func:`train_epoch`, :func:`validate`, :func:`epoch_row`) compute; the worker's recorders
(:mod:`unet_dist.train.recorder`, built from the loop config's specs) write the run files. Each worker resumes from the newest
complete checkpoint, and per epoch trains, validates, all-reduces metrics and reports.
"""

from __future__ import annotations

import contextlib
import posixpath
import random
import shutil
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch

from unet_dist.config import Config
from unet_dist.inference.metrics import EpochMeter
from unet_dist.inference.validate import validate
from unet_dist.losses import remap_ignore
from unet_dist.runs import RunDir, checkpoint_dir_name, checkpoint_epoch, epochs_done, is_complete, reported_metrics
from unet_dist.session import quiet_ray_logs
from unet_dist.storage import resolve
from unet_dist.train import collectives
from unet_dist.train.optim import seek_epoch, seek_fraction, steps_per_epoch
from unet_dist.train.recorder import Recorders, WorkerContext
from unet_dist.train.state import Cursor, TrainState

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data-order and augmentation seed of one epoch: the same on every attempt."""
    return seed * 1_000_003 + epoch


class SyncedBatches:
    """Batches while every rank still has one, no rank is out of time and no rank says a validation is due, so DDP
    ranks always take the same number of steps. ``out_of_time`` and ``exhausted`` tell afterwards why it stopped
    (the time budget; the end of the pass); otherwise a validation was due. Time and due are agreed before a batch is
    drawn, so a round that ends on a rank's clock leaves every rank's next batch in its iterator."""

    def __init__(self, it: Iterator[dict[str, Any]], distributed: bool, late: Any = lambda: False,
                 due: Any = lambda: False) -> None:
        self.it, self.distributed, self.late, self.due = it, distributed, late, due
        self.out_of_time = self.exhausted = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            go = torch.tensor([0 if self.late() else 1, 0 if self.due() else 1], dtype=torch.int64)
            if self.distributed:
                collectives.all_reduce(go, "min")
            if int(go.min()) == 0:
                self.out_of_time = int(go[0]) == 0
                return
            batch = next(self.it, None)
            has = torch.tensor([0 if batch is None else 1], dtype=torch.int64)
            if self.distributed:
                collectives.all_reduce(has, "min")
            if int(has[0]) == 0:
                self.exhausted = True
                return
            yield batch


def resume_source(run: RunDir, cfg: Config) -> tuple[str | None, bool]:
    """``(uri, full)``: the newest complete checkpoint among Ray's and the run directory's (full state),
    else ``train.resume_from`` (weights only: a new run's schedule starts at epoch 0), else ``(None, False)``.

    Ray may hand back the checkpoint before the last reported one (that report was not yet polled
    when a worker died); the run directory still holds the newer complete folder, so no reported epoch
    is trained twice.
    """
    import ray.train

    candidates = run.checkpoints()
    given = ray.train.get_checkpoint()
    if given is not None:
        loc = run.loc / posixpath.basename(given.path.rstrip("/"))
        epoch = checkpoint_epoch(loc)
        if epoch is not None and is_complete(loc):
            candidates[epoch] = loc
    if candidates:
        return candidates[max(candidates)].uri, True
    if cfg.train.resume_from:
        return cfg.train.resume_from, False
    return None, False


def _agree(value: Any, distributed: bool) -> Any:
    """Rank 0's value on every rank."""
    return collectives.broadcast_object(value) if distributed else value


def _slowest(seconds: float, distributed: bool) -> float:
    """The longest of the ranks' times: the clock that ended a budgeted pass (any rank out of time stops all), and
    one train time on every rank, so every rank agrees whether the budget is spent."""
    if not distributed:
        return seconds
    return float(collectives.all_reduce(torch.tensor([seconds], dtype=torch.float64), "max")[0])


def _worker_nodes(distributed: bool) -> list[str]:
    """Every rank's Ray node id (rank order), so a run records where its workers were placed."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    return collectives.all_gather_object(node) if distributed else [node]


@dataclass(frozen=True)
class Worker:
    """Who this process is in the worker group, and the run it trains."""

    rank: int
    world: int
    device: torch.device
    run: RunDir
    class_names: list[str] | None

    @property
    def distributed(self) -> bool:
        return self.world > 1


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: cfg (Config), spec (PipelineSpec), run_uri, train_rows, extra_state
    (fingerprint, class_names, inference: what rank 0 adds to each checkpoint), recorders (recorder specs)."""
    import ray.train
    import ray.train.torch

    cfg: Config = config["cfg"]
    ctx = ray.train.get_context()
    torch.set_num_threads(int(cfg.resources.torch_threads or max(1, round(cfg.resources.cpus_per_worker))))
    extra = config.get("extra_state") or {}
    w = Worker(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
               RunDir(resolve(config["run_uri"], cfg.storage)), extra.get("class_names"))
    quiet_ray_logs()
    seed_everything(cfg.train.seed)
    spe = steps_per_epoch(config["train_rows"] * config["spec"].num_crops_per_image, cfg, w.world)
    resume = _agree(resume_source(w.run, cfg) if w.rank == 0 else None, w.distributed)
    state = TrainState.build(cfg, w.device, spe, resume)
    nodes = _worker_nodes(w.distributed)
    recorder = Recorders.build(config["recorders"], WorkerContext(w.rank, w.world, w.run, cfg, extra, spe))
    recorder.on_start(start_epoch=state.start_epoch, start_pass=state.start_pass, resumed_from=state.resumed_from,
                      full_state=state.full_state,
                      world_size=w.world, nodes=nodes,
                      backend=collectives.group_backend())
    shards = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    cursor, epoch = state.cursor(spe * cfg.train.accumulate), state.start_epoch
    while cursor.pass_index < cfg.train.epochs and not state.budget_spent(cfg):
        ran, out_of_time = run_epoch(w, cfg, state, shards, config["spec"], recorder, epoch, spe, cursor)
        if out_of_time:
            break
        epoch += ran
    recorder.close()


def run_epoch(w: Worker, cfg: Config, state: TrainState, shards: tuple[Any, Any], spec: Any, recorder: Recorders,
              epoch: int, spe: int, cursor: Cursor) -> tuple[bool, bool]:
    """Train, validate, record and report one epoch: a validation round, a whole pass over the training data or, with
    ``train.val_every_*``, the part of one up to the next validation. ``(reported, out_of_time)``: nothing is
    reported when the round found the last pass already done (a round due on its last batch)."""
    import ray.train
    from ray.train import Checkpoint

    from unet_dist.data.pipeline import iter_val_batches

    seed_everything(epoch_seed(cfg.train.seed, epoch) + 7919 * w.rank)
    if cfg.train.time_budget_s is None and cursor.step == 0:
        seek_epoch(state.scheduler, cursor.pass_index, spe, cfg.train)
    t0 = time.perf_counter()
    train_m, out_of_time = train_epoch(w, cfg, state, shards[0], spec, recorder, epoch, spe, t0, cursor)
    if not train_m["images"] and not out_of_time:  # (a budget spent before the first step still validates once)
        return False, False
    train_time = _slowest(time.perf_counter() - t0, w.distributed)
    state.train_time_s += train_time
    if cfg.train.time_budget_s is not None:  # the schedule's place from the time every rank agrees on (the slowest
        # rank's clock may cross the budget after this rank's last step): a run that ends here ends fully annealed
        seek_fraction(state.scheduler, 1.0 if out_of_time else min(1.0, state.train_time_s / cfg.train.time_budget_s),
                      cfg.train)
    if w.distributed:
        sync_buffers(state.core)
    val_m, shown = validate(state.core, iter_val_batches(shards[1], cfg.data.val_batch_size, spec, w.rank, w.world),
                            state.loss_fn, cfg, w.device, w.class_names, autocast=state.autocast,
                            n_images=cfg.train.log_images if w.rank == 0 else 0, reduce=collectives.all_reduce_sum)
    row = {**epoch_row(epoch, state.lr, train_m, val_m, train_time, time.perf_counter() - t0, w.world),
           "train_time_s": state.train_time_s, "epochs_done": cursor.epochs_done()}
    local = recorder.on_epoch_end(row, shown, state.snapshot(epoch, cursor) if w.rank == 0 else {})  # rank 0 checkpoints
    checkpoint = Checkpoint.from_directory(local) if local else None
    ray.train.report(ray_metrics(cfg, row), checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(epoch),
                     checkpoint_upload_fn=recorder.upload_checkpoint if local else None)
    if local:
        shutil.rmtree(local, ignore_errors=True)
    recorder.after_report()
    return True, out_of_time


def ray_metrics(cfg: Config, row: dict[str, Any]) -> dict[str, Any]:
    """What an epoch reports to Ray: its scalar metrics and ``epochs_done`` (passes over the training data, which
    Tune's schedulers count time in), the monitored metric (which orders Ray's kept checkpoints) and the campaign
    metric (which ASHA schedules by) at their worst when not finite (a diverged epoch's NaN), so a NaN never ranks
    first; metrics.jsonl keeps the true values."""
    watched = [(cfg.train.monitor, cfg.train.monitor_mode), cfg.campaign_metric]
    return {**reported_metrics(row, watched), "epochs_done": epochs_done(row)}


def validation_due(tcfg: Any, steps: Any, seconds: Any) -> Any:
    """``() -> bool``: whether ``train.val_every_steps`` optimiser steps or ``train.val_every_s`` seconds of training
    have passed in this round (``steps()``, ``seconds()``); never before the round's first step."""
    every_steps, every_s = tcfg.val_every_steps, tcfg.validation_interval_s()
    return lambda: steps() > 0 and bool((every_steps and steps() >= every_steps) or (every_s and seconds() >= every_s))


def train_epoch(w: Worker, cfg: Config, state: TrainState, shard: Any, spec: Any, recorder: Recorders,
                epoch: int, spe: int, t0: float, cursor: Cursor) -> tuple[dict[str, Any], bool]:
    """Train from ``cursor`` to the end of its pass, or to the next validation ``train.val_every_*`` asks for (on an
    optimiser-step boundary), every rank taking the same number of steps; its metrics, and whether
    ``train.time_budget_s`` ended it (checked before every step, so it ends within one step of the budget).
    A round that finds its pass already done goes on into the next one."""
    tcfg = cfg.train
    budget = tcfg.time_budget_s
    state.model.train()
    meter = EpochMeter(cfg.model.num_classes, w.class_names, collectives.all_reduce_sum)
    state.optimizer.zero_grad(set_to_none=True)
    taken = [0, 0]  # micro-batches, optimiser steps in this round

    def used() -> float:
        return state.train_time_s + time.perf_counter() - t0

    def advance() -> None:
        if budget is not None:
            seek_fraction(state.scheduler, used() / budget, tcfg)
        elif tcfg.scheduler_interval == "step":
            state.scheduler.step()

    late = (lambda: used() >= budget) if budget is not None else (lambda: False)
    due = validation_due(tcfg, lambda: taken[1], lambda: time.perf_counter() - t0)
    if budget is not None:
        seek_fraction(state.scheduler, used() / budget, tcfg)
    while True:
        batches = SyncedBatches(_open_pass(cursor, shard, cfg, spec, w), w.distributed, late,
                                lambda: due() and cursor.step % tcfg.accumulate == 0)
        for batch in batches:
            recorder.before_step(epoch, taken[0])
            taken[0] += 1
            cursor.step += 1
            logits, y, loss = _forward_backward(w, state, batch, tcfg, sync=cursor.step % tcfg.accumulate == 0)
            if cursor.step % tcfg.accumulate == 0:
                state.step(tcfg.grad_clip)
                advance()
                taken[1] += 1
            meter.update(logits, y, loss.item())
            if cursor.step % tcfg.progress_every == 0:
                recorder.on_step(epoch=cursor.pass_index, step=cursor.step, loss=loss.item(), steps_per_epoch=spe, lr=state.lr,
                                 images_per_s=float(meter.sums[1]) * w.world / max(1e-9, time.perf_counter() - t0))
        if not batches.exhausted:
            break
        _end_pass(state, cursor, tcfg, advance)
        if taken[0] or cursor.pass_index >= tcfg.epochs:
            break
    return meter.compute(), batches.out_of_time  # a budget's end-of-epoch place: run_epoch, from the agreed time


def _open_pass(cursor: Cursor, shard: Any, cfg: Config, spec: Any, w: Worker) -> Iterator[dict[str, Any]]:
    """The cursor's batch iterator, opened at its pass's seeded order (past the micro-batches a resume skips)."""
    from unet_dist.data.pipeline import iter_train_batches

    if cursor.batches is None:
        cursor.batches = iter(iter_train_batches(shard, cfg.data.batch_size, epoch_seed(cfg.train.seed, cursor.pass_index),
                                                 spec, w.rank, w.world))
        for _ in range(cursor.step):
            next(cursor.batches, None)
    return cursor.batches


def _end_pass(state: TrainState, cursor: Cursor, tcfg: Any, advance: Any) -> None:
    """A pass ended: the step a partial accumulation still owes, the per-epoch schedule's step, the next pass."""
    if cursor.step % tcfg.accumulate:
        state.step(tcfg.grad_clip)
        advance()
    if tcfg.time_budget_s is None and tcfg.scheduler_interval == "epoch":
        state.scheduler.step()
    cursor.next_pass()


def _forward_backward(w: Worker, state: TrainState, batch: dict[str, Any], tcfg: Any, sync: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward and backward of one batch; gradients are all-reduced only on ``sync`` steps (accumulation)."""
    x = torch.as_tensor(batch["image"]).to(w.device, non_blocking=True)
    y = remap_ignore(torch.as_tensor(batch["mask"]).to(w.device, non_blocking=True).long(), tcfg.ignore_index)
    if state.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    no_sync = state.model.no_sync if (w.distributed and not sync and hasattr(state.model, "no_sync")) else contextlib.nullcontext
    with no_sync():
        with state.autocast():
            logits = state.model(x)
            loss = state.loss_fn(logits.float(), y)
        state.scaler.scale(loss / tcfg.accumulate).backward()
    return logits, y, loss


def epoch_row(epoch: int, lr: float, train_m: dict[str, Any], val_m: dict[str, Any], train_time: float,
              epoch_time: float, world: int) -> dict[str, Any]:
    """One metrics.jsonl line."""
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train_m["loss"], "train_iou": train_m["iou"], "train_mean_iou": train_m["mean_iou"],
        "train_dice": train_m["dice"], "train_pixel_acc": train_m["pixel_acc"],
        "val_loss": val_m["loss"], "val_iou": val_m["iou"], "val_mean_iou": val_m["mean_iou"],
        "val_dice": val_m["dice"], "val_pixel_acc": val_m["pixel_acc"],
        "val_image_iou": val_m["image_iou"], "val_image_mean_iou": val_m["image_mean_iou"],
        "val_image_dice": val_m["image_dice"], "val_image_mean_dice": val_m["image_mean_dice"],
        "val_per_class_iou": val_m["per_class_iou"], "val_per_class_dice": val_m["per_class_dice"],
        "val_confusion_matrix": val_m["confusion_matrix"],
        "train_images": train_m["images"], "val_images": val_m["images"],
        "images_per_s": train_m["images"] / max(train_time, 1e-9), "epoch_time_s": epoch_time,
        "world_size": world,
    }


def sync_buffers(model: torch.nn.Module) -> None:
    """Broadcast rank 0's buffers (BatchNorm running stats) so every rank validates the model rank 0 checkpoints.

    DDP broadcasts buffers at the start of each training forward, so after the last step every rank
    holds running stats updated from its own batch only.
    """
    for buf in model.buffers():
        collectives.broadcast(buf.data)


