"""`unet-dist ingest`: validate a folder/bucket of images+masks and write a sharded Parquet dataset.

SRC holds images/ and masks/ paired by file stem (or is a CSV with image,mask[,split] columns). Every pair is
validated; problems are listed together and nothing is written unless --skip-invalid. The dataset appears at DEST
only when complete (dataset.json is written last).

Splits are stratified: every split holds each stratum (image size class x channels x bit depth x foreground
tertile) in proportion, within one image of its share. --group-column keeps a patient's or slide's images in one
split; --folds K also deals the non-test pairs into K folds for cross-validation (fold 0 is val).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from unet_dist.cli.common import add_command, config_flags, console, emit, err_console, flag_overrides, json_flag
from unet_dist.config import load_config


def add_parser(sub: Any) -> None:
    p = add_command(sub, "ingest", run, __doc__)
    p.add_argument("src", help="folder, s3:// prefix or CSV manifest")
    p.add_argument("dest", help="output dataset location (local path or s3://)")
    p.add_argument("--mask-mode", choices=["binary", "multiclass", "instance"],
                   help="binary: 0/1 or 0/255; multiclass: ids 0..C-1 (palette ok); instance: id>0 is foreground")
    p.add_argument("--classes", type=lambda s: s.split(","), help="comma-separated class names, e.g. background,cell")
    p.add_argument("--split", type=lambda s: [float(x) for x in s.split(",")], help="train,val,test ratios (default 0.8,0.1,0.1)")
    p.add_argument("--split-column", help="take the split from this CSV column")
    p.add_argument("--group-column", help="CSV column naming each pair's group (patient, plate, slide): a group stays in one split")
    p.add_argument("--folds", type=int, help="deal the non-test pairs into K folds (fold 0 is val)")
    p.add_argument("--no-stratify", action="store_true", help="a plain seeded random split instead of a stratified one")
    p.add_argument("--seed", type=int, help="split seed")
    p.add_argument("--rows-per-shard", type=int, help="rows per Parquet file")
    p.add_argument("--skip-invalid", action="store_true", help="write the valid pairs, list the skipped ones in the manifest")
    json_flag(p, "print a one-line JSON summary instead of tables")
    config_flags(p)


def run(args: argparse.Namespace) -> int:
    from unet_dist.data.ingest import ingest

    cfg = load_config(args.config, [*args.overrides, *flag_overrides(args, {
        "mask_mode": "ingest.mask_mode", "classes": "ingest.class_names", "split": "ingest.split",
        "split_column": "ingest.split_column", "seed": "ingest.seed", "rows_per_shard": "ingest.rows_per_shard",
        "group_column": "ingest.group_column", "folds": "ingest.folds",
    }), *(["ingest.skip_invalid=true"] if args.skip_invalid else []), *(["ingest.stratify=false"] if args.no_stratify else [])])
    manifest = ingest(args.src, args.dest, cfg.ingest, cfg.storage, progress=not args.json, console=err_console, results=console)
    if args.json:
        emit(json.dumps({"dataset": args.dest, "counts": manifest.get("counts"), "fingerprint": manifest.get("fingerprint")}))
    return 0
