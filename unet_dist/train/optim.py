"""Optimisers and learning-rate schedules, each a small registry.

Schedules are ``LambdaLR`` factors over a global step count with a linear warm-up.
``train.scheduler_interval`` decides whether a "step" is an optimiser step or an epoch. The training loop
calls :func:`seek_epoch` at every epoch start, so the schedule's position is "epoch + fraction of this
epoch": a run that resumes on fewer or more workers (elastic training), or whose epochs take a few steps
more or less than estimated, stays on the schedule it would have followed.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from unet_dist.config import Config, TrainConfig
from unet_dist.registry import Registry

Factor = Callable[[float, TrainConfig], float]
OptimizerBuilder = Callable[[Iterable[torch.nn.Parameter], TrainConfig], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerBuilder] = Registry("optimizer", key="train.optimizer")
SCHEDULERS: Registry[Factor] = Registry("scheduler", key="train.scheduler")


def register_optimizer(name: str) -> Callable[[OptimizerBuilder], OptimizerBuilder]:
    """Register ``fn(params, cfg) -> torch.optim.Optimizer``."""
    return OPTIMIZERS.register(name)


def register_scheduler(name: str) -> Callable[[Factor], Factor]:
    """Register ``fn(progress in [0, 1], cfg) -> lr factor`` for the post-warm-up phase."""
    return SCHEDULERS.register(name)


def list_optimizers() -> list[str]:
    return sorted(OPTIMIZERS)


def list_schedulers() -> list[str]:
    return sorted(SCHEDULERS)


@register_optimizer("adam")
def _adam(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register_optimizer("adamw")
def _adamw(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@register_optimizer("sgd")
def _sgd(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)


@register_scheduler("none")
def _constant(progress: float, cfg: TrainConfig) -> float:
    return 1.0


@register_scheduler("cosine")
def _cosine(progress: float, cfg: TrainConfig) -> float:
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@register_scheduler("poly")
def _poly(progress: float, cfg: TrainConfig) -> float:
    return max(0.0, 1 - progress) ** cfg.poly_power


@register_scheduler("step")
def _step(progress: float, cfg: TrainConfig) -> float:
    epochs_after_warmup = progress * max(1, cfg.epochs - cfg.warmup_epochs)
    return cfg.gamma ** int(epochs_after_warmup // cfg.step_size)


def create_optimizer(params: Iterable[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.optimizer)([p for p in params if p.requires_grad], cfg)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """LR multiplier after ``step`` scheduler steps: linear warm-up, then the registered decay."""
    per = 1 if cfg.scheduler_interval == "epoch" else max(1, steps_per_epoch)
    warmup = cfg.warmup_epochs * per
    total = cfg.epochs * per
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return SCHEDULERS.get(cfg.scheduler)(progress, cfg)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """A ``LambdaLR``; call ``.step()`` after each optimiser step or each epoch per ``train.scheduler_interval``."""
    SCHEDULERS.get(cfg.scheduler)  # an unknown name fails here, not at the first step
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))


def steps_per_epoch(train_crops: int, cfg: Config, world: int) -> int:
    """Optimiser steps per epoch on ``world`` workers: ``train_crops`` (rows x crops per image) split evenly over
    workers, batched, accumulated."""
    per_worker = math.ceil(train_crops / max(1, world))
    return max(1, math.ceil(per_worker / cfg.data.batch_size) // cfg.train.accumulate)


def seek_epoch(scheduler: LambdaLR, epoch: int, steps_per_epoch: int, cfg: TrainConfig) -> None:
    """Place ``scheduler`` (and its optimiser's LRs) at the first step of ``epoch``."""
    step = epoch * (max(1, steps_per_epoch) if cfg.scheduler_interval == "step" else 1)
    scheduler.last_epoch = step
    _set_lrs(scheduler, [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)])


def budget_factor(fraction: float, cfg: TrainConfig) -> float:
    """LR multiplier at ``fraction`` (0..1) of a time budget: linear warm-up over its first
    ``warmup_epochs / epochs``, then the registered decay over the rest (0 at the end for cosine/poly)."""
    fraction = min(max(fraction, 0.0), 1.0)
    warm = cfg.warmup_epochs / cfg.epochs
    if fraction < warm:
        return max(fraction / warm, 0.01)
    return SCHEDULERS.get(cfg.scheduler)((fraction - warm) / max(1e-9, 1 - warm), cfg)


def seek_fraction(scheduler: LambdaLR, fraction: float, cfg: TrainConfig) -> None:
    """Set the optimiser's LRs to the time-budget schedule at ``fraction`` of the budget."""
    factor = budget_factor(fraction, cfg)
    _set_lrs(scheduler, [base * factor for base in scheduler.base_lrs])


def _set_lrs(scheduler: LambdaLR, lrs: list[float]) -> None:
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
