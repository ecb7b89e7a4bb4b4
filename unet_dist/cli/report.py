"""`unet-dist report`: write one self-contained HTML report of a run, a campaign or a whole storage.

Renders URI (a run or campaign folder written by train or tune, local or s3://, copied trees too) as one HTML file
that loads nothing from the network: train/val IoU and loss per epoch, the leaderboard with searched values, the
best checkpoint's predictions on validation images (TP green, FP red, FN blue) and a test view (per-class IoU and
Dice, pixel accuracy, confusion matrix, 5 best and 5 worst test images). Reads the dataset's Parquet shards
directly: no Ray. A storage root (STORAGE, holding campaigns and runs) gets the overview instead: the best so far
over time, one leaderboard, and what each campaign teaches (importance and effects of its searched keys).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unet_dist.cli.common import add_command, config_flags, console, emit, json_flag, storage_config, warn


def add_parser(sub: Any) -> None:
    p = add_command(sub, "report", run, __doc__)
    p.add_argument("uri", metavar="URI", help="run or campaign folder (STORAGE/<name>), or STORAGE for the overview")
    p.add_argument("-o", "--output", default="report.html", help="HTML file to write, local or s3:// (default report.html)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="split of the test view (default test; val if the dataset has none)")
    p.add_argument("--data", help="dataset URI (default: the one the best checkpoint was trained on)")
    p.add_argument("--images", type=int, default=4, metavar="N", help="validation images with overlays (default 4)")
    json_flag(p)
    config_flags(p)


def run(args: argparse.Namespace) -> int:
    from unet_dist.collect.report import write_report

    report = write_report(args.uri, args.output, split=args.split, dataset=args.data, storage=storage_config(args),
                          val_images=args.images, progress=not args.json)
    warn(report.notes, "[yellow]note:[/]")
    if args.json:
        emit(json.dumps({"report": args.output, "bytes": len(report.html.encode()), "kind": report.subject.kind,
                          "name": report.subject.name, "best": report.best_run, "checkpoint": report.checkpoint,
                          "split": report.split, "notes": report.notes}))
        return 0
    best = f" · best {report.best_run} ({report.checkpoint})" if report.best_run else ""
    view = "" if report.subject.kind == "storage" else f" · test view on {report.split or '-'}"
    console.print(f"report of {report.subject.kind} [bold]{report.subject.name}[/]{best}{view} -> [bold]{args.output}[/] "
                  f"({len(report.html.encode()) / 1e6:.1f} MB)", highlight=False, soft_wrap=True)
    return 0
