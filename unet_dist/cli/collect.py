"""`unet-dist collect`: rank every run and trial under a storage URI into a Parquet leaderboard.

Reads every campaign (STORAGE/<name>/campaign.json + trials/<id>/run.json) and every single run
(STORAGE/<name>/run.json) from their records, never their checkpoints; prints them best first by the monitored
metric and writes STORAGE/leaderboard/leaderboard.parquet (readable by pandas, pyarrow, DuckDB). A re-run reads only
the records that changed. Folders that are not runs are skipped with one warning each.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from typing import Any

from unet_dist.collect.insight import EVALUATORS
from unet_dist.config import TrackingConfig
from unet_dist.cli.common import (add_command, campaign_filter, config_flags, console, err_console, print_wide, storage_config,
                                  storage_root, warn)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "collect", run, __doc__)
    storage_root(p)
    campaign_filter(p)
    p.add_argument("--status", action="append", metavar="STATUS",
                   help="only runs with this status: finished, early_stopped, running, error, invalid, stopped, failed (repeatable)")
    p.add_argument("--top", type=int, metavar="N", help="show the best N rows")
    p.add_argument("--metric", help="rank by this metric (default: the runs' monitored metric, else val_mean_iou)")
    p.add_argument("--format", choices=["table", "json", "csv", "parquet"], default="table",
                   help="table (default), json (one line), csv or parquet (to --out or stdout)")
    p.add_argument("--wide", action="store_true",
                   help="the table with every column (foreground and per-class IoU, Dice) and searched values whole")
    p.add_argument("--importance", action="store_true",
                   help="instead of the ranking: which searched key matters for the metric, and the mean metric of "
                        "each value with a 95%% bootstrap interval (trials compared at one pass: --at-epoch)")
    p.add_argument("--at-epoch", type=float, metavar="N",
                   help="with --importance: compare trials at pass N, leaving out those stopped before it "
                        "(default: the last pass every trial reached, so an early-stopped trial counts at its rung)")
    p.add_argument("--evaluator", choices=EVALUATORS, default=EVALUATORS[0],
                   help="with --importance: anova (default: each key's share of the variance), ped-anova (Optuna: "
                        "what it takes to reach the top trials) or fanova (Optuna and scikit-learn)")
    p.add_argument("--mlflow", metavar="URI",
                   help="also mirror every run and campaign into this MLflow tracking server (params, per-epoch "
                        "metrics, status, run.json; a campaign as a parent run with nested trials); a re-run logs only "
                        "what is new. Credentials: MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN")
    experiment = TrackingConfig.model_fields["experiment"].default
    p.add_argument("--experiment", default=experiment, metavar="NAME",
                   help=f"MLflow experiment for --mlflow (default {experiment}, as tracking.experiment)")
    p.add_argument("--out", metavar="PATH", help="file for --format csv/parquet (local path or s3://)")
    p.add_argument("--no-write", action="store_true", help="do not write the leaderboard and its index to storage")
    config_flags(p)


def run(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from unet_dist.collect.leaderboard import collect

    with Progress(console=err_console, transient=True, disable=args.format != "table") as bar:
        task = bar.add_task("reading run records", total=None)
        board = collect(args.storage, storage=storage_config(args), campaigns=args.campaign, statuses=args.status,
                        write=not args.no_write, metric=args.metric, progress=lambda done, n: bar.update(task, completed=done, total=n))
    warn(board.warnings())
    if args.mlflow:
        mirror(args)
    if args.importance:
        return importance(board, args)
    if args.format == "json":
        print(board.to_json(limit=args.top))
        return 0
    if args.format in ("csv", "parquet"):
        write_rows(board, args.format, args.out, args.top)
        err_console.print(board.summary(), highlight=False)
        return 0
    print_wide(board.to_table(limit=args.top, wide=args.wide))
    written = f" -> {board.uri}" if not args.no_write else ""
    console.print(f"{board.summary()}{written}", highlight=False, soft_wrap=True)
    return 0


def mirror(args: argparse.Namespace) -> None:
    """Mirror the storage into MLflow (:func:`unet_dist.collect.mirror.sync_storage`); one line on stderr says what it did."""
    from unet_dist.collect.mirror import sync_storage

    busy = err_console.status(f"mirroring into MLflow at {args.mlflow}") if args.format == "table" else nullcontext()
    with busy:
        result = sync_storage(args.storage, args.mlflow, args.experiment, storage_config(args), args.campaign)
    err_console.print(f"MLflow {args.mlflow} experiment {args.experiment}: {result.summary()}", highlight=False,
                      soft_wrap=True)


def importance(board: Any, args: argparse.Namespace) -> int:
    """The insight table (or one JSON line) of the collected campaign trials."""
    from unet_dist.collect.insight import campaign_insight
    from unet_dist.storage import resolve

    insight = campaign_insight(board, resolve(args.storage, storage_config(args)), args.at_epoch, args.evaluator)
    if args.format == "json":
        print(insight.to_json())
    elif not insight.keys:
        console.print(f"nothing to rank: {insight.basis} (importance needs 3 trials and a searched key that varies)",
                      highlight=False, soft_wrap=True)
    else:
        print_wide(insight.to_table())
    return 0


def write_rows(board: Any, fmt: str, out: str | None, top: int | None) -> None:
    """The leaderboard rows as CSV or Parquet, to --out or stdout."""
    import io

    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    from unet_dist.collect.leaderboard import to_arrow

    table, buf = to_arrow(board.rows[:top]), io.BytesIO()
    pq.write_table(table, buf) if fmt == "parquet" else pcsv.write_csv(table, buf)
    if out:
        from unet_dist.storage import resolve

        resolve(out).write_bytes(buf.getvalue())
    else:
        sys.stdout.buffer.write(buf.getvalue())
        sys.stdout.flush()
