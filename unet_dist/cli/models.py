"""`unet-dist models`: list backbones, pooling, unpooling, activations and norms.

Print the model registry. --smoke builds every backbone x unpooling (x pooling) variant and runs one
forward/backward pass on CPU.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.table import Table

from unet_dist.cli.common import add_command, console, emit, json_flag


def add_parser(sub: Any) -> None:
    p = add_command(sub, "models", run, __doc__)
    json_flag(p, "machine-readable output")
    p.add_argument("--smoke", action="store_true", help="build and run every variant (a few minutes on CPU)")


def run(args: argparse.Namespace) -> int:
    from unet_dist.models import registry_info, smoke_variants

    if args.smoke:
        rows = [r._asdict() if hasattr(r, "_asdict") else dict(r) for r in smoke_variants()]
        if args.json:
            emit(json.dumps(rows, default=str))
        else:
            console.print(smoke_table(rows))
            console.print(f"[green]{len(rows)} variants built and ran forward + backward.[/]")
        return 0
    info = registry_info()
    if args.json:
        emit(json.dumps(info))
        return 0
    table = Table(title="unet-dist model registry")
    table.add_column("option")
    table.add_column("choices")
    for key, values in info.items():
        table.add_row(key, ", ".join(values))
    console.print(table)
    return 0


def smoke_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="U-Net variants: one forward/backward pass on CPU")
    for col in ("backbone", "pooling", "unpooling", "params", "output", "seconds"):
        table.add_column(col, justify="right" if col in ("params", "seconds") else "left")
    for r in rows:
        table.add_row(str(r["backbone"]), str(r["pooling"]), str(r["unpooling"]), f"{r['params']:,}",
                      "×".join(str(s) for s in r["output_shape"]), f"{r['seconds']:.2f}")
    return table
