"""Distributed training on Ray Train: ``fit(cfg) -> TrainSummary``, ``build_trainer`` for callers that run the
``TorchTrainer`` themselves (Tune), and their building blocks.

Evaluate a stored checkpoint with :func:`unet_dist.inference.evaluate.evaluate`.
"""

from unet_dist.checkpoint import load_checkpoint, save_checkpoint
from unet_dist.losses import create_loss, list_losses, register_loss
from unet_dist.train.optim import create_optimizer, create_scheduler, list_optimizers, list_schedulers, register_optimizer, register_scheduler
from unet_dist.train.trainer import RunInterrupted, TrainingFailed, TrainSummary, build_trainer, fit

__all__ = [
    "fit", "build_trainer", "TrainSummary", "TrainingFailed", "RunInterrupted",
    "create_loss", "list_losses", "register_loss",
    "create_optimizer", "create_scheduler", "list_optimizers", "list_schedulers", "register_optimizer", "register_scheduler",
    "load_checkpoint", "save_checkpoint",
]

