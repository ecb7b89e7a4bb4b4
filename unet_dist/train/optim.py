"""Optimisers and learning-rate schedules, each a small registry.

Schedules are ``LambdaLR`` factors over a global step count with a linear warm-up, so the
scheduler state in a checkpoint is one integer and resuming lands on the same learning rate.
``train.scheduler_interval`` decides whether a "step" is an optimiser step or an epoch.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from unet_dist.config import TrainConfig
from unet_dist.errors import ConfigError

Factor = Callable[[float, TrainConfig], float]
_OPTIMIZERS: dict[str, Callable[[Iterable[torch.nn.Parameter], TrainConfig], torch.optim.Optimizer]] = {}
_SCHEDULES: dict[str, Factor] = {}


def register_optimizer(name: str):
    def wrap(fn):
        _OPTIMIZERS[name] = fn
        return fn

    return wrap


def register_scheduler(name: str):
    """Register ``fn(progress in [0, 1], cfg) -> lr factor`` for the post-warm-up phase."""

    def wrap(fn: Factor) -> Factor:
        _SCHEDULES[name] = fn
        return fn

    return wrap


def list_optimizers() -> list[str]:
    return sorted(_OPTIMIZERS)


def list_schedulers() -> list[str]:
    return sorted(_SCHEDULES)


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
    if cfg.optimizer not in _OPTIMIZERS:
        raise ConfigError(f"train.optimizer: unknown {cfg.optimizer!r}; choose one of {', '.join(list_optimizers())}")
    return _OPTIMIZERS[cfg.optimizer]([p for p in params if p.requires_grad], cfg)


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """LR multiplier after ``step`` scheduler steps: linear warm-up, then the registered decay."""
    per = 1 if cfg.scheduler_interval == "epoch" else max(1, steps_per_epoch)
    warmup = cfg.warmup_epochs * per
    total = cfg.epochs * per
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return _SCHEDULES[cfg.scheduler](progress, cfg)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> LambdaLR:
    """A ``LambdaLR``; call ``.step()`` after each optimiser step or each epoch per ``train.scheduler_interval``."""
    if cfg.scheduler not in _SCHEDULES:
        raise ConfigError(f"train.scheduler: unknown {cfg.scheduler!r}; choose one of {', '.join(list_schedulers())}")
    return LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))
