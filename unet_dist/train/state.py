"""A worker's training state: model, optimiser, LR schedule, AMP scaler and loss, with save and resume.

Kept apart from the epoch phases (:mod:`unet_dist.train.loop`) and from what rank 0 records
(:mod:`unet_dist.train.recorder`), as Ray Train's controller keeps its state apart from its callbacks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from unet_dist.config import Config
from unet_dist import checkpoint as ckpt
from unet_dist.losses import create_loss
from unet_dist.train.optim import create_optimizer, create_scheduler


def amp_context(device: torch.device, enabled: bool) -> tuple[Callable[[], Any], torch.dtype | None]:
    """``(autocast factory, dtype)``: bf16 where supported, else fp16 (with a scaler); a no-op off CUDA."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype


@dataclass
class Cursor:
    """Where training stands in the data: the pass, the micro-batches taken in it out of ``per_pass`` (the estimate
    for this worker group) and (within a worker's life) its live batch iterator. A validation round may end mid-pass
    (``train.val_every_*``); the next round goes on from here, and a checkpoint saves ``pass``/``pass_step`` so a
    resume skips what the pass already trained."""

    pass_index: int = 0
    step: int = 0
    per_pass: int = 1
    batches: Iterator[dict[str, Any]] | None = None

    def next_pass(self) -> None:
        self.pass_index, self.step, self.batches = self.pass_index + 1, 0, None

    def epochs_done(self) -> float:
        """Passes done: whole after a pass, else the pass plus its trained fraction (below 1 whatever the estimate)."""
        if self.step == 0:
            return float(self.pass_index)
        return round(self.pass_index + min(self.step / max(1, self.per_pass), 0.999), 4)


@dataclass
class TrainState:
    """What one worker trains; ``model`` is DDP-wrapped when the world has more than one rank, ``core`` never is."""

    model: torch.nn.Module
    core: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: torch.nn.Module
    autocast: Callable[[], Any]
    channels_last: bool
    start_epoch: int = 0
    start_pass: int = 0
    """The pass over the training data the run goes on with, and the micro-batches of it already trained (a validation
    round may end mid-pass: ``train.val_every_*``), out of ``pass_steps`` per pass when they were saved."""
    pass_step: int = 0
    pass_steps: int = 0
    resumed_from: str | None = None
    full_state: bool = False
    train_time_s: float = 0.0
    """Seconds spent training (validation excluded) over the whole run, resumes included: the time budget's clock."""

    @classmethod
    def build(cls, cfg: Config, device: torch.device, steps_per_epoch: int, resume: tuple[str | None, bool]) -> "TrainState":
        """Build everything for ``cfg`` and restore ``resume = (uri, full)``: full state, or weights only when not ``full``."""
        import ray.train.torch

        from unet_dist.models import create_unet

        tcfg = cfg.train
        resumed_from, full = resume
        model = create_unet(cfg.model, storage=cfg.storage)
        saved = ckpt.load_checkpoint(resumed_from, cfg.storage) if resumed_from else None
        if saved is not None:
            model.load_state_dict(saved["model"])
        channels_last = tcfg.channels_last
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = ray.train.torch.prepare_model(model)
        core = getattr(model, "module", model)
        optimizer = create_optimizer(core.parameters(), tcfg)
        scheduler = create_scheduler(optimizer, tcfg, steps_per_epoch)
        autocast, amp_dtype = amp_context(device, tcfg.amp)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        loss_fn = create_loss(tcfg.loss, cfg.model.num_classes, tcfg.class_weights).to(device)
        state = cls(model, core, optimizer, scheduler, scaler, loss_fn, autocast, channels_last,
                    resumed_from=resumed_from, full_state=full)
        if saved is not None and full:
            state.restore(saved)
        return state

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue a run: optimiser, schedule and scaler as saved, from the epoch after the saved one."""
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.start_epoch = int(saved["epoch"]) + 1
        self.start_pass = int(saved.get("pass", self.start_epoch))  # checkpoints before val_every_*: one pass per epoch
        self.pass_step, self.pass_steps = int(saved.get("pass_step", 0)), int(saved.get("pass_steps", 0))
        self.train_time_s = float(saved.get("train_time_s", 0.0))

    def cursor(self, micro_per_pass: int) -> Cursor:
        """Where training goes on in the data; a pass saved mid-way on another worker count (elastic) or batch size
        resumes at the same fraction of it."""
        step = self.pass_step
        if step and self.pass_steps and self.pass_steps != micro_per_pass:
            step = min(micro_per_pass - 1, round(step * micro_per_pass / self.pass_steps))
        return Cursor(self.start_pass, step, micro_per_pass)

    def snapshot(self, epoch: int, cursor: Cursor) -> dict[str, Any]:
        """The resumable part of a checkpoint (CPU tensors and plain values), with where the next round starts."""
        return {
            "model": {k: v.detach().cpu() for k, v in self.core.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": epoch,
            "pass": cursor.pass_index, "pass_step": cursor.step, "pass_steps": cursor.per_pass,
            "train_time_s": self.train_time_s,
        }

    def budget_spent(self, cfg: Config) -> bool:
        budget = cfg.train.time_budget_s
        return budget is not None and self.train_time_s >= budget

    def step(self, clip: float | None) -> None:
        """One optimiser step (unscale and clip first when asked), then clear the gradients."""
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.core.parameters(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
