"""Plan a campaign on a cluster: which node types of a Ray cluster-launcher config fit its trials, how many run
at once, how many nodes the autoscaler will ask for, and the GPU-hours at the campaign's time budget.

Reads a campaign config and a launcher YAML (``cluster/*.yaml``); needs no Ray cluster and no cloud account.

How trials are counted on a node type (``resources.placement_strategy``):

- a *worker* is one bundle ``{CPU: cpus_per_worker, GPU: gpus_per_worker}``; ``workers/node`` is how many fit
  one node;
- ``PACK`` and ``SPREAD`` let one trial's workers span nodes, so ``trials at once`` pools the worker slots of
  ``max_workers`` nodes (``trials/node`` counts only trials whose whole worker group fits one node);
  ``STRICT_PACK`` needs the whole group on one node; ``STRICT_SPREAD`` one worker per node;
- each trial's Tune driver (``tune.trial_cpus``) runs on the head when the head's CPUs hold all concurrent
  drivers, else its CPU is charged to the worker nodes, spread over the trial's workers;
- a training run without ``tune.search_space`` is one trial without a driver.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from unet_dist.config import Config, parse_yaml_file
from unet_dist.errors import ConfigError, UserError


@dataclass(frozen=True)
class Shape:
    """What one node offers Ray: CPUs, GPUs and the GPU model."""

    cpus: float
    gpus: float = 0.0
    gpu_type: str | None = None


AWS_INSTANCE_TYPES: dict[str, Shape] = {
    # CPU: vCPUs, as Ray's AWS provider detects them (DefaultVCpus).
    **{f"m6i.{s}": Shape(c) for s, c in (("large", 2), ("xlarge", 4), ("2xlarge", 8), ("4xlarge", 16), ("8xlarge", 32))},
    **{f"m5.{s}": Shape(c) for s, c in (("large", 2), ("xlarge", 4), ("2xlarge", 8), ("4xlarge", 16), ("8xlarge", 32))},
    **{f"c6i.{s}": Shape(c) for s, c in (("large", 2), ("xlarge", 4), ("2xlarge", 8), ("4xlarge", 16), ("8xlarge", 32))},
    **{f"g4dn.{s}": Shape(c, g, "T4") for s, c, g in (("xlarge", 4, 1), ("2xlarge", 8, 1), ("4xlarge", 16, 1),
                                                      ("8xlarge", 32, 1), ("12xlarge", 48, 4), ("16xlarge", 64, 1))},
    **{f"{fam}.{s}": Shape(c, g, gpu) for fam, gpu in (("g5", "A10G"), ("g6", "L4"))
       for s, c, g in (("xlarge", 4, 1), ("2xlarge", 8, 1), ("4xlarge", 16, 1), ("8xlarge", 32, 1), ("16xlarge", 64, 1),
                       ("12xlarge", 48, 4), ("24xlarge", 96, 4), ("48xlarge", 192, 8))},
    "p3.2xlarge": Shape(8, 1, "V100"), "p3.8xlarge": Shape(32, 4, "V100"), "p3.16xlarge": Shape(64, 8, "V100"),
    "p4d.24xlarge": Shape(96, 8, "A100"), "p5.48xlarge": Shape(192, 8, "H100"),
}
"""Known AWS instance types; others need explicit ``resources`` in the launcher YAML."""

EPS = 1e-9


@dataclass(frozen=True)
class NodeType:
    """One ``available_node_types`` entry, resolved to the resources Ray will see."""

    name: str
    instance: str
    shape: Shape
    min_workers: int
    max_workers: int


@dataclass(frozen=True)
class Cluster:
    path: str
    provider: str
    max_workers: int
    head: NodeType
    workers: list[NodeType]


@dataclass(frozen=True)
class Demand:
    """What one trial asks for, and how many trials the campaign runs."""

    workers: int
    min_workers: int
    worker_cpus: float
    worker_gpus: float
    driver_cpus: float
    strategy: str
    trials: int
    grid_points: int
    samples: int
    skipped: int
    concurrent: int
    trial_time_s: float | None
    campaign_time_s: float | None
    epochs: int
    is_campaign: bool


@dataclass
class NodePlan:
    """The campaign on one worker node type; ``short`` says which resource is missing when no trial fits."""

    node_type: str
    instance: str
    cpus: float
    gpus: float
    gpu_type: str | None
    max_nodes: int
    workers_per_node: int
    trials_per_node: int
    trials_at_once: int
    running: int
    nodes: int
    waves: int | None
    wall_hours: float | None
    gpu_hours: float | None
    node_hours: float | None
    billed_gpu_hours: float | None
    short: str | None = None


@dataclass
class Plan:
    campaign: str
    cluster: str
    provider: str
    demand: Demand
    drivers_on_head: bool
    head: dict[str, Any]
    node_types: list[NodePlan]
    estimate: str
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def read_cluster(path: str | Path) -> Cluster:
    """A launcher YAML's node types with their CPUs/GPUs (``resources``, else the AWS instance-type table)."""
    p = Path(path)
    data = parse_yaml_file(p, "cluster config", "pass a Ray cluster-launcher YAML (examples in cluster/)")
    types = data.get("available_node_types") if isinstance(data, dict) else None
    if not isinstance(types, dict) or not types:
        raise ConfigError(f"{p}: no available_node_types; a launcher YAML lists its head and worker node types there")
    provider = str((data.get("provider") or {}).get("type", "unknown"))
    cluster_max = int(data.get("max_workers", 2))
    head_name = data.get("head_node_type")
    if head_name not in types:
        raise ConfigError(f"{p}: head_node_type {head_name!r} is not one of available_node_types ({', '.join(types)})")
    nodes = {name: _node_type(p, provider, name, spec or {}, cluster_max, name == head_name) for name, spec in types.items()}
    workers = [n for name, n in nodes.items() if name != head_name and n.max_workers > 0]
    return Cluster(str(p), provider, cluster_max, nodes[head_name], workers)


def _node_type(path: Path, provider: str, name: str, spec: dict[str, Any], cluster_max: int, is_head: bool) -> NodeType:
    node_config = spec.get("node_config") or {}
    instance = str(node_config.get("InstanceType") or node_config.get("machineType") or "-")
    resources = dict(spec.get("resources") or {})
    known = AWS_INSTANCE_TYPES.get(instance) if provider == "aws" else None
    if known is None and "CPU" not in resources:
        where = f"{path}: available_node_types.{name}"
        if provider == "aws":
            raise ConfigError(f"{where}: unknown instance type {instance!r} and no resources; add resources: "
                              f"{{CPU: n, GPU: m}} to the node type")
        raise ConfigError(f"{where}: no resources.CPU; the {provider} launcher does not detect a machine's resources, "
                          f"so add resources: {{CPU: n, GPU: m}}")
    base = known or Shape(0)
    gpu_type = base.gpu_type or _gcp_accelerator(node_config) or next(
        (k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")), None)
    shape = Shape(float(resources.get("CPU", base.cpus)), float(resources.get("GPU", base.gpus)), gpu_type)
    max_workers = 0 if is_head else min(int(spec.get("max_workers", cluster_max)), cluster_max)
    return NodeType(name, instance, shape, int(spec.get("min_workers", 0)), max_workers)


def _gcp_accelerator(node_config: dict[str, Any]) -> str | None:
    accelerators = node_config.get("guestAccelerators") or []
    return str(accelerators[0].get("acceleratorType")) if accelerators else None


def trial_demand(cfg: Config, cluster: Cluster) -> Demand:
    """One trial's worker group and driver, and the number of trials (grid points x samples, impossible points
    removed), from the campaign config."""
    from unet_dist.tune.space import check_space

    res = cfg.resources
    workers = res.num_workers if isinstance(res.num_workers, int) else res.num_workers[1]
    least = res.num_workers if isinstance(res.num_workers, int) else res.num_workers[0]
    use_gpu = res.use_gpu if res.use_gpu != "auto" else any(n.shape.gpus > 0 for n in cluster.workers)
    is_campaign = bool(cfg.tune.search_space)
    grid_points, skipped, samples = 1, 0, 1
    if is_campaign:
        checked = check_space(cfg)
        grid_points, skipped, samples = max(1, len(checked.grid)), len(checked.skipped), cfg.tune.num_samples
    trials = grid_points * samples
    return Demand(
        workers=workers, min_workers=least, worker_cpus=res.cpus_per_worker,
        worker_gpus=res.gpus_per_worker if use_gpu else 0.0, driver_cpus=cfg.tune.trial_cpus if is_campaign else 0.0,
        strategy=res.placement_strategy, trials=trials, grid_points=grid_points, samples=samples, skipped=skipped,
        concurrent=min(cfg.tune.max_concurrent_trials, trials) if is_campaign else 1,
        trial_time_s=cfg.train.time_budget_s, campaign_time_s=cfg.tune.time_budget_s if is_campaign else None,
        epochs=cfg.train.epochs, is_campaign=is_campaign)


def _fits(have: float, need: float) -> int:
    return math.floor(have / need + EPS) if need > 0 else 10**9


def plan_node_type(d: Demand, node: NodeType, drivers_on_head: bool) -> NodePlan:
    """Workers and trials per node, trials at once over ``max_workers`` nodes, and the nodes asked for."""
    s = node.shape
    cpu_per_worker = d.worker_cpus + (0.0 if drivers_on_head else d.driver_cpus / d.workers)
    by_cpu, by_gpu = _fits(s.cpus, cpu_per_worker), _fits(s.gpus, d.worker_gpus)
    per_node = min(by_cpu, by_gpu)
    per_trial_node = per_node // d.workers
    if d.strategy == "STRICT_PACK":
        at_once = per_trial_node * node.max_workers
    elif d.strategy == "STRICT_SPREAD" and node.max_workers < d.workers:
        at_once = 0
    else:
        at_once = per_node * node.max_workers // d.workers
    running = min(d.concurrent, at_once)
    if running == 0:
        nodes = 0
    elif d.strategy == "STRICT_PACK":
        nodes = math.ceil(running / per_trial_node)
    else:
        nodes = math.ceil(running * d.workers / per_node)
        nodes = max(nodes, d.workers) if d.strategy == "STRICT_SPREAD" else nodes
    nodes = max(min(nodes, node.max_workers), node.min_workers)
    short = None if at_once else _shortage(d, node, by_cpu, by_gpu, cpu_per_worker)
    waves, wall, gpu_h, node_h = _hours(d, running, nodes)
    return NodePlan(node.name, node.instance, s.cpus, s.gpus, s.gpu_type, node.max_workers, per_node, per_trial_node,
                    at_once, running, nodes, waves, wall, gpu_h, node_h, None if node_h is None else node_h * s.gpus, short)


def _shortage(d: Demand, node: NodeType, by_cpu: int, by_gpu: int, cpu_per_worker: float) -> str:
    """Which resource keeps a trial off this node type, in numbers."""
    s, name = node.shape, node.name
    gpu_bound = by_gpu <= by_cpu
    unit, need, have = ("GPU", d.worker_gpus, s.gpus) if gpu_bound else ("CPU", cpu_per_worker, s.cpus)
    if min(by_cpu, by_gpu) == 0:
        return f"a worker needs {need:g} {unit} and {name} has {have:g}"
    total = d.workers * need
    if d.strategy == "STRICT_PACK":
        return f"a trial needs {d.workers} workers x {need:g} {unit} = {total:g} {unit} on one node (STRICT_PACK) and {name} has {have:g}"
    if d.strategy == "STRICT_SPREAD":
        return f"a trial needs {d.workers} nodes (STRICT_SPREAD) and {name} has max_workers {node.max_workers}"
    return (f"a trial needs {d.workers} workers x {need:g} {unit} = {total:g} {unit} and {name} can launch "
            f"{node.max_workers} x {have:g} = {node.max_workers * have:g}")


def _hours(d: Demand, running: int, nodes: int) -> tuple[int | None, float | None, float | None, float | None]:
    """Waves, wall-clock hours, GPU-hours used by trials, node-hours held, at the campaign's time budget."""
    if running == 0 or (d.trial_time_s is None and d.campaign_time_s is None):
        return None, None, None, None
    waves = math.ceil(d.trials / running)
    trial_gpus = d.workers * d.worker_gpus
    if d.trial_time_s is not None:
        wall_s = waves * d.trial_time_s
        gpu_s = d.trials * trial_gpus * d.trial_time_s
        if d.campaign_time_s is not None:
            wall_s = min(wall_s, d.campaign_time_s)
            gpu_s = min(gpu_s, running * trial_gpus * d.campaign_time_s)
    else:
        wall_s = d.campaign_time_s
        gpu_s = running * trial_gpus * wall_s
    return waves, wall_s / 3600, gpu_s / 3600, nodes * wall_s / 3600


class NoFitError(UserError):
    """No node type of the cluster can run one trial of the campaign."""


def plan(campaign: str | Path, cluster_path: str | Path, overrides: list[str] | None = None) -> Plan:
    """The campaign in ``campaign`` (a unet-dist config) on the launcher config ``cluster_path``; raises
    :class:`NoFitError` naming the short resource when no node type fits a trial."""
    from unet_dist.config import load_config

    cfg = load_config(campaign, overrides or [])
    cluster = read_cluster(cluster_path)
    if not cluster.workers:
        raise ConfigError(f"{cluster.path}: no worker node type with max_workers > 0; the autoscaler could launch nothing")
    d = trial_demand(cfg, cluster)
    drivers_on_head = cluster.head.shape.cpus + EPS >= d.concurrent * d.driver_cpus
    node_plans = [plan_node_type(d, n, drivers_on_head) for n in cluster.workers]
    if not any(n.trials_at_once for n in node_plans):
        largest = max(node_plans, key=lambda n: (n.gpus, n.cpus) if d.worker_gpus else (n.cpus, n.gpus))
        raise NoFitError(f"{campaign}: no node type of {cluster.path} fits one trial: {largest.short} "
                         f"(largest node type; per worker {d.worker_cpus:g} CPU + {d.worker_gpus:g} GPU from "
                         f"resources.cpus_per_worker/gpus_per_worker, {d.workers} worker(s) from resources.num_workers)")
    estimate, missing = _assumption(d)
    head = {"node_type": cluster.head.name, "instance": cluster.head.instance, "cpus": cluster.head.shape.cpus}
    return Plan(str(campaign), cluster.path, cluster.provider, d, drivers_on_head, head, node_plans, estimate, missing)


def _assumption(d: Demand) -> tuple[str, list[str]]:
    if d.trial_time_s is None and d.campaign_time_s is None:
        return (f"GPU-hours unavailable: no time budget; an estimate from train.epochs={d.epochs} needs a measured "
                "epoch time", ["train.time_budget_s (per trial) or tune.time_budget_s (per campaign)"])
    parts = []
    if d.trial_time_s is not None:
        parts.append(f"every trial trains its full train.time_budget_s={d.trial_time_s:g} s (an upper bound: ASHA "
                     "stops some sooner; validation and start-up not counted)")
    if d.campaign_time_s is not None:
        parts.append(f"the campaign stops at tune.time_budget_s={d.campaign_time_s:g} s" +
                     ("" if d.trial_time_s is not None else " with every running trial busy until then"))
    return "GPU-hours = trials x workers x GPUs per worker x time: " + "; ".join(parts), []


def render(p: Plan, console: Any) -> None:
    """The plan as short lines per node type (fits an 80-column terminal)."""
    d = p.demand
    what = (f"{d.trials} trials ({d.grid_points} grid point(s) x {d.samples} sample(s)"
            + (f"; {d.skipped} impossible point(s) skipped" if d.skipped else "") + f"), at most {d.concurrent} at once"
            if d.is_campaign else "one training run (no tune.search_space)")
    span = f"{d.workers}" if d.workers == d.min_workers else f"{d.min_workers}-{d.workers} (elastic; planned at {d.workers})"
    driver = (f" + a {d.driver_cpus:g}-CPU Tune driver " + ("on the head" if p.drivers_on_head else "charged to the workers' CPUs")
              if d.driver_cpus else "")
    head = p.head
    lines = [f"[bold]{p.campaign}[/]: {what}",
             f"each: {span} worker(s) x ({d.worker_cpus:g} CPU + {d.worker_gpus:g} GPU), {d.strategy} placement{driver}",
             f"[bold]{p.cluster}[/] ({p.provider}; head node type {head['node_type']}: {head['instance']}, {head['cpus']:g} CPU)"]
    for n in p.node_types:
        gpu = f"{n.gpus:g} GPU" + (f" {n.gpu_type}" if n.gpu_type and n.gpus else "")
        lines.append(f"  [bold]{n.node_type}[/] {n.instance}: {n.cpus:g} CPU, {gpu}, up to {n.max_nodes} node(s)")
        if n.short:
            lines.append(f"    does not fit: {n.short}")
            continue
        lines.append(f"    workers/node {n.workers_per_node} · trials/node {n.trials_per_node} · trials at once "
                     f"{n.trials_at_once} · nodes asked {n.nodes} (for {n.running} trial(s) at once)")
        if n.wall_hours is not None:
            lines.append(f"    {n.waves} wave(s) · wall {_h(n.wall_hours)} h · GPU-h used {_h(n.gpu_hours)} · "
                         f"node-h {_h(n.node_hours)} · GPU-h billed {_h(n.billed_gpu_hours)}")
    lines.append(p.estimate + "." + (f" Missing: {', '.join(p.missing)}." if p.missing else ""))
    lines.append("trials/node counts trials whose workers all fit one node; with PACK/SPREAD a trial's workers may "
                 "span nodes, so trials at once pools the worker slots of all its nodes.")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def _h(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"
