"""`unet-dist cluster`: plan a campaign on a Ray cluster-launcher config (no cluster needed).

`cluster plan CAMPAIGN.yaml CLUSTER.yaml` prints, per worker node type of CLUSTER (cluster/*.yaml), how many workers
and trials fit a node and run at once over its max_workers nodes, how many nodes the autoscaler will ask for, and
the GPU-hours at the campaign's time budget; exit 2 when no node type fits a trial, naming the short resource.
"""

from __future__ import annotations

import argparse
from typing import Any

from unet_dist.cli.common import add_command, console, emit, json_flag, overrides_flag


def add_parser(sub: Any) -> None:
    p = add_command(sub, "cluster", run, __doc__)
    p.add_argument("action", choices=["plan"], help="plan: fit the campaign to the cluster's node types")
    p.add_argument("campaign", help="campaign or training config (e.g. jobs/configs/backbones.yaml)")
    p.add_argument("cluster", help="Ray cluster-launcher YAML (e.g. cluster/aws-gpu.yaml)")
    overrides_flag(p, "--set resources.num_workers=4")
    json_flag(p)


def run(args: argparse.Namespace) -> int:
    from unet_dist.cluster import plan, render

    result = plan(args.campaign, args.cluster, args.overrides)
    if args.json:
        emit(result.to_json())
    else:
        render(result, console)
    return 0
