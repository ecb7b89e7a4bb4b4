"""`unet-dist export`: copy the best checkpoints to a model store, each with a model card.

Copies the best K checkpoints under STORAGE (ranked like `unet-dist collect`) to DEST (local or s3://), each as
DEST/<campaign>-<trial>-epoch_NNNN/ with state.pt and COMPLETE copied byte for byte and a model.json card (config
without credentials, searched values, metrics with per-class IoU, dataset URI and fingerprint, code version, source
checkpoint), and points DEST/champion (alias.json) at the best. Exporting again copies nothing twice. DEST/<model>
and DEST/champion work wherever a checkpoint does (evaluate, predict, --resume-from, model.weights).
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

from unet_dist.cli.common import (add_command, campaign_filter, config_flags, console, emit, err_console, json_flag,
                                  print_wide, storage_config, storage_root, warn)
from unet_dist.config import TrackingConfig


def add_parser(sub: Any) -> None:
    p = add_command(sub, "export", run, __doc__)
    storage_root(p, "storage root the runs are under: local path or s3://bucket/prefix")
    p.add_argument("dest", help="model store: local folder or s3://bucket/prefix, outside STORAGE")
    p.add_argument("--top", type=int, default=1, metavar="K", help="export the best K runs/trials (default 1)")
    p.add_argument("--remove", action="append", metavar="NAME", help="remove the exported model DEST/NAME and its "
                   "pin in STORAGE/exports/ instead of exporting (gc keeps a pinned source until then; repeatable)")
    p.add_argument("--mlflow", metavar="URI", help="also register the exported models in this MLflow server's Model "
                   "Registry: each a version (its card as tags and description, linked to its training run's MLflow "
                   "run), the champion under the alias champion; DEST must be s3:// (versions point at it)")
    registered, experiment = (TrackingConfig.model_fields[k].default for k in ("registered_model", "experiment"))
    p.add_argument("--registered-model", default=registered, metavar="NAME",
                   help=f"registered model for --mlflow (default {registered}, as tracking.registered_model)")
    p.add_argument("--experiment", default=experiment, metavar="NAME",
                   help=f"MLflow experiment whose runs the versions link to (default {experiment}, as tracking.experiment)")
    campaign_filter(p)
    json_flag(p)
    config_flags(p)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from unet_dist.collect.export import export

    if args.remove:
        return remove(args)
    if args.mlflow:  # every check before a byte is copied
        from unet_dist.collect.mirror import check_registry

        check_registry(args.mlflow, args.dest, storage_config(args))
    with Progress(TextColumn("copying checkpoints"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err_console, transient=True, disable=args.json) as bar:
        task = bar.add_task("copy", total=None)
        result = export(args.storage, args.dest, top=args.top, campaigns=args.campaign, storage=storage_config(args),
                        on_bytes=lambda done, total: bar.update(task, completed=done, total=total))
    warn(result.warnings)
    registered = _register(args, result) if args.mlflow else None
    if args.json:
        emit(json.dumps({**json.loads(result.to_json()), **({"mlflow": asdict(registered)} if registered else {})}))
        return 0
    print_wide(result.to_table())  # a pipe gets model names whole
    console.print(result.summary(), highlight=False, soft_wrap=True)
    if registered:
        console.print(registered.summary(), highlight=False, soft_wrap=True)
    return 0


def _register(args: argparse.Namespace, result: Any) -> Any:
    from unet_dist.collect.mirror import register_export

    with err_console.status(f"registering in MLflow at {args.mlflow}") if not args.json else nullcontext():
        return register_export(result, args.mlflow, args.registered_model, args.experiment, storage_config(args))


def remove(args: argparse.Namespace) -> int:
    """``--remove NAME``: the exported model and its pin go; gc may then delete its source."""
    from unet_dist.collect.export import remove_export

    for name in args.remove:
        gone = remove_export(args.storage, args.dest, name, storage_config(args))
        if args.json:
            emit(json.dumps(gone))
            continue
        alias = " and the champion alias" if gone["champion_removed"] else ""
        console.print(f"removed {gone['model']}{alias} and its pin: gc may now delete "
                      f"{gone['source'] or 'its source'}", highlight=False, soft_wrap=True)
    return 0
