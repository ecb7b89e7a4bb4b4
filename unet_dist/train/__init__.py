"""Distributed training on Ray Train. This package's namespace is the surface Tune, jobs and the CLI use (the
modules inside it are its internals; ``tests/test_architecture.py`` holds every caller outside ``train`` to it).

- ``fit(cfg, callbacks=..., recorders=...) -> TrainSummary``: one run, checked before Ray starts, with its record,
  live view and resume. ``callbacks`` are Ray Train ``UserCallback``s (metrics of every report, failures);
  ``recorders`` are worker recorder specs (:mod:`unet_dist.train.recorder`) beside the run record and TensorBoard.
- ``build_trainer`` and its parts for callers that run the ``TorchTrainer`` themselves (a Tune trial):
  ``preflight``, ``prepare_data``, ``shared_datasets``, ``default_recorders``, ``dataset_ref``,
  ``fit_off_main_thread``, ``failure_cause``, ``write_hparams``.
- Registries of optimisers, schedulers and losses, and the checkpoint file.

Evaluate a stored checkpoint with :func:`unet_dist.inference.evaluate.evaluate`.
"""

from unet_dist.checkpoint import load_checkpoint, save_checkpoint
from unet_dist.losses import create_loss, list_losses, register_loss
from unet_dist.train.optim import create_optimizer, create_scheduler, list_optimizers, list_schedulers, register_optimizer, register_scheduler
from unet_dist.train.recorder import RunRecorder, TensorBoardRecorder, WorkerContext, WorkerRecorder, write_hparams
from unet_dist.train.trainer import (RunInterrupted, TrainingFailed, TrainSummary, build_trainer, dataset_ref, default_recorders,
                                     failure_cause, fit, fit_off_main_thread, preflight, prepare_data, shared_datasets)

__all__ = [
    "fit", "TrainSummary", "TrainingFailed", "RunInterrupted",
    "build_trainer", "preflight", "prepare_data", "shared_datasets", "default_recorders", "dataset_ref",
    "fit_off_main_thread", "failure_cause", "write_hparams",
    "WorkerRecorder", "WorkerContext", "RunRecorder", "TensorBoardRecorder",
    "create_loss", "list_losses", "register_loss",
    "create_optimizer", "create_scheduler", "list_optimizers", "list_schedulers", "register_optimizer", "register_scheduler",
    "load_checkpoint", "save_checkpoint",
]
