"""`unet-dist config`: print the resolved config (defaults <- YAML <- --set) as YAML."""

from __future__ import annotations

import argparse
from typing import Any

from unet_dist.cli.common import add_command, config_flags, load


def add_parser(sub: Any) -> None:
    p = add_command(sub, "config", run, __doc__)
    p.add_argument("--reference", action="store_true", help="print every key with type, default and meaning (Markdown)")
    config_flags(p)


def run(args: argparse.Namespace) -> int:
    import yaml

    if args.reference:
        from unet_dist.config import config_reference

        print(config_reference())
        return 0
    print(yaml.safe_dump(load(args).to_dict(), sort_keys=False), end="")
    return 0
