"""The ``unet-dist`` command line: one module per command, each with ``add_parser(subparsers)`` and ``run(args)``.

A command parses its flags (the shared groups live in :mod:`unet_dist.cli.common`), builds a config, calls one
function of the package and renders its result (the result types render themselves where they can). User errors
print as one line, no traceback, with their exit code.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from unet_dist.cli import (cluster, collect, config, demo, evaluate, export, gc, ingest, models, predict, report, synthetic,
                           train, tune)
from unet_dist.cli.common import EPILOG, err_console, json_only_stdout
from unet_dist.errors import UserError

COMMANDS = (models, config, synthetic, ingest, train, evaluate, tune, collect, export, gc, report, predict, demo, cluster)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-dist",
        description="Distributed U-Net segmentation on Ray: ingest image/mask folders, train data-parallel with "
                    "Ray Train, search designs with Ray Tune, rank, export, report and predict.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__import__('unet_dist').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with json_only_stdout(args):
            return args.run(args)
    except UserError as err:
        label = "[yellow]stopped:[/]" if err.exit_code == 130 else "[bold red]error:[/]"
        err_console.print(f"{label} {err}", highlight=False, soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return 130


__all__ = ["main", "build_parser", "COMMANDS"]
