"""`unet-dist gc`: delete checkpoints not worth keeping (dry run unless --yes).

Keeps, under STORAGE, every checkpoint Ray's snapshot references in a run or trial that can still resume (status
running, stopped, failed or error: `train --name` / `tune --resume` need them), the best checkpoint of the
--keep-best best runs/trials (default 3), each run's best (--keep-trial-best) and newest (--keep-latest: both on by
default; extending a finished run starts from its newest), every exported checkpoint (pinned in STORAGE/exports/ by
`unet-dist export` until `export --remove`) and a running run's newest checkpoints; deletes every other checkpoint
folder, including orphans (no COMPLETE marker, or epochs after a stopped trial's last recorded one). A finished
run's Ray snapshot is rewritten first so it no longer lists what goes. Without --yes it only prints what would go,
the bytes freed and a plan digest; --plan FILE saves that plan, and --yes --plan FILE deletes exactly it (refusing,
with nothing deleted, if storage changed since). Each deletion is checked: refused objects and delete markers of a
versioned S3 bucket are named, not counted as freed, and the exit status is 1. Records, metrics, logs and model
stores are never deleted.
"""

from __future__ import annotations

import argparse
from typing import Any

from unet_dist.cli.common import (add_command, campaign_filter, config_flags, console, emit, err_console, json_flag,
                                  print_wide, storage_config, storage_root, warn)


def add_parser(sub: Any) -> None:
    p = add_command(sub, "gc", run, __doc__)
    storage_root(p)
    p.add_argument("--keep-best", type=int, default=3, metavar="N", help="keep the best checkpoint of the N best runs (default 3)")
    p.add_argument("--keep-trial-best", action=argparse.BooleanOptionalAction, default=True,
                   help="keep each run's and trial's best checkpoint (default: on)")
    p.add_argument("--keep-latest", action=argparse.BooleanOptionalAction, default=True,
                   help="keep each run's and trial's newest complete checkpoint (default: on; a resume or an extension "
                        "with more epochs starts from it)")
    campaign_filter(p)
    p.add_argument("--yes", action="store_true", help="delete (default: dry run, nothing deleted)")
    p.add_argument("--plan", metavar="FILE", help="dry run: save the plan to FILE; with --yes: delete exactly the plan "
                   "in FILE (its keep options apply), or refuse if storage changed since it was made")
    p.add_argument("--purge-versions", action="store_true",
                   help="versioned S3 bucket: delete every version of each deleted file (else only delete markers are "
                        "added and no bytes are freed)")
    json_flag(p, "one JSON line: keep and delete lists with reasons, bytes freed")
    config_flags(p)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from unet_dist.collect.gc import collect_garbage, plan, verified_plan, write_plan

    storage = storage_config(args)
    if args.yes and args.plan:
        todo = verified_plan(args.storage, args.plan, storage)
    else:
        todo = plan(args.storage, keep_best=args.keep_best, keep_trial_best=args.keep_trial_best,
                    keep_latest=args.keep_latest, campaigns=args.campaign, storage=storage)
    if args.plan and not args.yes:
        write_plan(todo, args.plan)
    warn(todo.notes, "[yellow]note:[/]")
    if args.yes:
        with Progress(TextColumn("deleting checkpoints"), BarColumn(), MofNCompleteColumn(), console=err_console,
                      transient=True, disable=args.json) as bar:
            task = bar.add_task("delete", total=len(todo.delete))
            collect_garbage(todo, storage, on_item=lambda _: bar.advance(task), purge_versions=args.purge_versions)
    warn([f"{fail['uri']}: {fail['why']}" for fail in todo.failed], "[bold red]not deleted:[/]")
    if args.json:
        emit(todo.to_json())
    else:
        if todo.delete:
            print_wide(todo.to_table())
        for line in todo.summary_lines(args.plan):
            console.print(line, highlight=False, soft_wrap=True)
    return 1 if todo.failed else 0
