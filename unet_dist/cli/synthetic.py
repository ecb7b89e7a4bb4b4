"""`unet-dist synthetic`: write a deterministic SYNTHETIC image/mask folder (images/, masks/)."""

from __future__ import annotations

import argparse
from typing import Any

from unet_dist.cli.common import add_command, console


def add_parser(sub: Any) -> None:
    p = add_command(sub, "synthetic", run, __doc__)
    p.add_argument("dest", help="output folder or s3:// prefix")
    p.add_argument("--n", type=int, default=32, help="number of pairs (default 32)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--mode", choices=["binary", "multiclass"], default="binary")
    p.add_argument("--channels", type=int, choices=[1, 3], default=1)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from unet_dist.data.synthetic import generate

    generate(args.dest, n=args.n, size=args.size, mode=args.mode, seed=args.seed, channels=args.channels)
    console.print(f"[green]wrote {args.n} synthetic {args.mode} image/mask pairs to {args.dest}[/]")
    return 0
