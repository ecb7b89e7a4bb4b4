"""`unet-dist tune`: run (or --resume) a Ray Tune campaign over the U-Net design space.

Runs the campaign in --config (a base run config plus its tune: section: search_space, scheduler, num_samples, ...).
Every trial is a data-parallel Ray Train run; ASHA stops poor trials early; every trial's record, metrics and
checkpoints land under STORAGE/<tune.name>/trials/. A name that exists needs --resume, which continues a killed
campaign: finished trials are kept, unfinished ones continue from their newest checkpoint, errored ones are retried
once.
"""

from __future__ import annotations

import argparse
from typing import Any

from unet_dist.cli.common import (add_command, console, emit, flag_overrides, load, print_fields, ray_run_flags,
                                  require_dataset)
from unet_dist.config import Config


def add_parser(sub: Any) -> None:
    p = add_command(sub, "tune", run, __doc__)
    p.add_argument("--data", help="URI of an ingested dataset (default: data.dataset of the config)")
    p.add_argument("--resume", action="store_true", help="continue the campaign of this name from storage")
    ray_run_flags(p, "where campaigns go: local path (default ./runs) or s3://bucket/prefix", "campaign name (tune.name)")


def run(args: argparse.Namespace) -> int:
    cfg = load(args, flag_overrides(args, {"data": "data.dataset", "storage": "storage.uri", "address": "resources.address",
                                           "name": "tune.name"}))
    from unet_dist.tune.campaign import check_campaign, run_campaign

    check_campaign(cfg, args.resume)  # the space, names and campaign folder: before torch and Ray are imported
    require_dataset(cfg)

    summary = run_campaign(cfg, resume=args.resume, progress=not args.json, verbose=args.verbose)
    print_campaign(summary, cfg, args.json)
    return 0


def print_campaign(summary: Any, cfg: Config, as_json: bool) -> None:
    """The top-N trials, the best trial and its best checkpoint; one JSON line with --json."""
    from unet_dist.tune.campaign import trials_table

    if as_json:
        emit(summary.to_json())
        return
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    console.print()
    console.print(trials_table(summary.trials, list(cfg.tune.search_space), summary.metric,
                               title=f"top {cfg.tune.top} of {len(summary.trials)} trials ({counts})", limit=cfg.tune.top))
    console.rule(f"[bold green]campaign {summary.status}[/]: {summary.name}")
    best = summary.best or {}
    print_fields([("campaign", summary.uri), ("best trial", best.get("trial_id")), ("searched", best.get("params")),
                  (f"best {summary.metric}", best.get("best_value")), ("best checkpoint", best.get("best_checkpoint")),
                  ("skipped points", len(summary.skipped)), ("duration_s", summary.duration_s)])
