"""`unet-dist demo`: end-to-end demo: synthetic (or --data) images -> ingest -> a small tuning campaign.

Runs the whole product on a local Ray: generates a SYNTHETIC data set (or uses --data FOLDER with images/ and
masks/), ingests it, runs a small ASHA campaign of 2-worker Ray Train trials over backbones x unpooling methods, and
prints the ranking and the best checkpoint.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unet_dist.cli.common import (add_command, console, emit, err_console, load, print_fields, train_flags,
                                  train_overrides)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "demo", run, __doc__)
    p.add_argument("--data", dest="data_folder", help="folder with images/ and masks/ instead of synthetic data")
    p.add_argument("--workdir", default="demo-runs", help="where the demo writes data, dataset and runs (default demo-runs/)")
    train_flags(p)


def run(args: argparse.Namespace) -> int:
    from unet_dist.demo import DEMO_PROFILE, run_demo

    cfg = load(args, train_overrides(args), base=DEMO_PROFILE)
    summary, published = run_demo(cfg, data=args.data_folder, workdir=args.workdir, console=err_console if args.json else console)
    if args.json:
        emit(json.dumps({"campaign": json.loads(summary.to_json()), "collect": json.loads(published.to_json())}))
        return 0
    from unet_dist.collect.publish import summary_lines

    console.print()
    console.print(published.leaderboard.to_table())
    console.rule(f"[bold green]demo finished[/]: campaign {summary.name} {summary.status}")
    print_fields([("campaign", summary.uri), *summary_lines(published)])
    console.print(f"\nOpen the report: [bold]{published.report}[/]", highlight=False, soft_wrap=True)
    return 0
