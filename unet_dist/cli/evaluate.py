"""`unet-dist evaluate`: evaluate a checkpoint on a split of an ingested dataset.

Recomputes per-class IoU, Dice, pixel accuracy and loss of CHECKPOINT (local or s3://) on one split, with the model
and data settings stored in the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from unet_dist.cli.common import add_command, config_flags, console, emit, json_flag
from unet_dist.config import load_config


def add_parser(sub: Any) -> None:
    p = add_command(sub, "evaluate", run, __doc__)
    p.add_argument("checkpoint", help="checkpoint folder or state file of any name (local path or s3://)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--data", help="dataset URI (default: the one the checkpoint was trained on); images are normalised "
                                  "with the checkpoint's training statistics either way")
    p.add_argument("--per-image", type=int, default=10, metavar="N",
                   help="show the N worst images by IoU (default 10, 0: none); --json always holds every image")
    p.add_argument("--address", help=argparse.SUPPRESS)  # evaluate reads the shards itself and starts no Ray
    json_flag(p, "one JSON line (aggregate metrics and per_image, worst first)")
    config_flags(p)


def run(args: argparse.Namespace) -> int:
    from unet_dist.inference.evaluate import evaluate

    cfg = load_config(args.config, args.overrides)
    out = evaluate(args.checkpoint, split=args.split, dataset=args.data, storage=cfg.storage, progress=not args.json)
    if args.json:
        emit(json.dumps(out, default=str))
        return 0
    console.print(f"[bold]{args.checkpoint}[/] (epoch {out.get('epoch')}) on the {args.split} split", highlight=False, soft_wrap=True)
    console.print(class_table(out))
    console.print(f"per-image IoU {out['image_iou']:.4f} (mean IoU {out['image_mean_iou']:.4f}) · pooled foreground IoU "
                  f"{out['iou']:.4f} · pixel accuracy {out['pixel_acc']:.4f} · loss {out['loss']:.4f}")
    if args.per_image:
        console.print(per_image_table(out["per_image"], args.per_image, len(out["per_class_iou"]) == 2))
    return 0


def class_table(out: dict[str, Any]) -> Table:
    """Per-class IoU and Dice, and their means."""
    table = Table()
    table.add_column("class")
    table.add_column("IoU", justify="right")
    table.add_column("Dice", justify="right")
    for name, iou in out["per_class_iou"].items():
        dice = out["per_class_dice"][name]
        table.add_row(name, "-" if iou is None else f"{iou:.4f}", "-" if dice is None else f"{dice:.4f}")
    table.add_row("[bold]mean[/]", f"{out['mean_iou']:.4f}", f"{out['mean_dice']:.4f}")
    return table


def per_image_table(rows: list[dict[str, Any]], limit: int, binary: bool) -> Table:
    """The worst ``limit`` images of evaluate's per-image table."""
    table = Table(title=f"worst {min(limit, len(rows))} of {len(rows)} images by {'foreground' if binary else 'mean'} IoU")
    for col in ("image", "IoU", "Dice", "pixel acc", "pixels"):
        table.add_column(col, justify="left" if col == "image" else "right")
    for r in rows[:limit]:
        table.add_row(str(r["id"]), f"{r['iou']:.4f}", f"{r['dice']:.4f}", f"{r['pixel_acc']:.4f}", f"{r['pixels']:,}")
    return table
