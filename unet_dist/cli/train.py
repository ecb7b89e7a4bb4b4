"""`unet-dist train`: train a U-Net data-parallel with Ray Train.

Trains on an ingested dataset with DDP across Ray workers (GPU + NCCL when present, else CPU + gloo), writes
per-epoch metrics, TensorBoard logs and checkpoints to storage, and resumes after failures.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unet_dist.cli.common import (add_command, console, emit, load, print_fields, require_dataset, train_flags,
                                  train_overrides)

SUMMARY_FIELDS = ("run_dir", "epochs", "best_metric", "best_val_iou", "best_epoch", "best_checkpoint", "metrics_file",
                  "tensorboard_dir", "duration_s")


def add_parser(sub: Any) -> None:
    p = add_command(sub, "train", run, __doc__)
    p.add_argument("--data", help="URI of an ingested dataset (from `unet-dist ingest`)")
    train_flags(p)


def run(args: argparse.Namespace) -> int:
    cfg = load(args, train_overrides(args))  # before torch is imported: a config error answers in a fraction of a second
    require_dataset(cfg)
    from unet_dist.train import fit

    print_summary(fit(cfg, progress=not args.json, verbose=args.verbose), args.json)
    return 0


def print_summary(summary: Any, as_json: bool) -> None:
    """One JSON line with --json; otherwise the fields a user looks for, paths printed whole."""
    if as_json:
        emit(summary.to_json())
        return
    data = json.loads(summary.to_json())
    console.print()
    console.rule(f"[bold green]training finished[/]: {data['name']}")
    print_fields([(f"best {data['monitor']}" if key == "best_metric" else key, data.get(key)) for key in SUMMARY_FIELDS])
