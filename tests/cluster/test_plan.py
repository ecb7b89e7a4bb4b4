"""`unet-dist cluster plan`: every shipped campaign on every shipped cluster config, one case computed by hand,
the one-line refusal when no node type fits, and the launcher YAML errors. No Ray cluster. Budget: under 20 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from unet_dist.cli import main
from unet_dist.cluster import NoFitError, plan, read_cluster, render
from unet_dist.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CAMPAIGNS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
CLUSTERS = sorted((REPO / "cluster").glob("*.yaml"))
AWS = REPO / "cluster" / "aws-gpu.yaml"
BACKBONES = REPO / "jobs" / "configs" / "backbones.yaml"


def _text(p) -> str:
    console = Console(record=True, width=200)
    render(p, console)
    return console.export_text()


@pytest.mark.parametrize("cluster", CLUSTERS, ids=[p.name for p in CLUSTERS])
@pytest.mark.parametrize("campaign", CAMPAIGNS, ids=[p.name for p in CAMPAIGNS])
def test_every_campaign_on_every_cluster(campaign: Path, cluster: Path):
    """Either a plan whose numbers are consistent, or a one-line refusal naming the short resource."""
    try:
        p = plan(campaign, cluster)
    except NoFitError as err:
        assert "\n" not in str(err) and ("GPU" in str(err) or "CPU" in str(err)), err
        return
    d = p.demand
    assert d.trials >= 1 and 1 <= d.concurrent <= d.trials
    fitting = [n for n in p.node_types if not n.short]
    assert fitting
    for n in fitting:
        assert n.workers_per_node >= 1 and n.trials_per_node == n.workers_per_node // d.workers
        assert 1 <= n.running <= min(d.concurrent, n.trials_at_once)
        assert 1 <= n.nodes <= n.max_nodes
        assert n.nodes * n.workers_per_node >= n.running * d.workers, "the nodes asked hold the running trials"
        assert (n.gpu_hours is None) == (d.trial_time_s is None and d.campaign_time_s is None)
    text = _text(p)
    assert str(cluster.relative_to(REPO)) in text or cluster.name in text
    assert p.missing or "GPU-hours =" in text
    json.loads(p.to_json())


def test_backbones_on_aws_by_hand():
    """backbones.yaml: 3 backbones x 5 unpoolings = 15 grid points, resnet18 + maxunpool impossible -> 14 trials,
    2 at once, 2 workers x (1 CPU + 1 GPU) each (use_gpu=auto and the cluster has GPU types), 600 s per trial.
    g5.2xlarge (8 CPU, 1 GPU): 1 worker/node; 8 nodes pool 8 slots -> 4 trials at once; 2 running need 4 nodes.
    p4d.24xlarge (96 CPU, 8 GPU): 8 workers/node, 4 trials/node; 2 nodes -> 8 at once; 2 running need 1 node.
    7 waves x 600 s = 1.1667 h; GPU-h = 14 x 2 x 1 x 600 s = 4.667; node-h 4 x 1.1667 and 1 x 1.1667."""
    p = plan(BACKBONES, AWS)
    d = p.demand
    assert (d.trials, d.grid_points, d.skipped, d.concurrent) == (14, 14, 1, 2)
    assert (d.workers, d.worker_cpus, d.worker_gpus, d.driver_cpus) == (2, 1.0, 1.0, 0.1)
    assert p.drivers_on_head and p.head == {"node_type": "head", "instance": "m6i.2xlarge", "cpus": 8.0}
    g5, p4d = p.node_types
    assert (g5.instance, g5.cpus, g5.gpus, g5.gpu_type, g5.max_nodes) == ("g5.2xlarge", 8, 1, "A10G", 8)
    assert (g5.workers_per_node, g5.trials_per_node, g5.trials_at_once, g5.running, g5.nodes, g5.waves) == (1, 0, 4, 2, 4, 7)
    assert (p4d.workers_per_node, p4d.trials_per_node, p4d.trials_at_once, p4d.nodes) == (8, 4, 8, 1)
    for n in (g5, p4d):
        assert n.wall_hours == pytest.approx(7 * 600 / 3600)
        assert n.gpu_hours == pytest.approx(14 * 2 * 600 / 3600)
    assert g5.node_hours == pytest.approx(4 * 7 / 6) and g5.billed_gpu_hours == pytest.approx(4 * 7 / 6)
    assert p4d.node_hours == pytest.approx(7 / 6) and p4d.billed_gpu_hours == pytest.approx(8 * 7 / 6)
    text = _text(p)
    assert "14 trials (14 grid point(s) x 1 sample(s); 1 impossible point(s) skipped), at most 2 at once" in text
    assert "workers/node 1 · trials/node 0 · trials at once 4 · nodes asked 4" in text
    assert "workers/node 8 · trials/node 4 · trials at once 8 · nodes asked 1" in text
    assert "7 wave(s) · wall 1.17 h · GPU-h used 4.67 · node-h 4.67 · GPU-h billed 4.67" in text
    assert "GPU-h used 4.67 · node-h 1.17 · GPU-h billed 9.33" in text


def test_quarter_gpu_trials_and_a_missing_budget():
    """gpu.yaml: 16 sampled trials, 8 at once, 1 worker x (2 CPU + 0.25 GPU): 4 per g5.2xlarge (CPU and GPU both
    allow 4), so 8 running trials need 2 nodes; no time budget, so no GPU-hours and the missing keys named."""
    p = plan(REPO / "jobs" / "configs" / "gpu.yaml", AWS)
    assert (p.demand.trials, p.demand.concurrent) == (16, 8)
    g5 = p.node_types[0]
    assert (g5.workers_per_node, g5.trials_per_node, g5.trials_at_once, g5.nodes) == (4, 4, 32, 2)
    assert g5.gpu_hours is None and p.missing == ["train.time_budget_s (per trial) or tune.time_budget_s (per campaign)"]
    assert "GPU-hours unavailable: no time budget; an estimate from train.epochs=40 needs a measured epoch time" in _text(p)


def test_strategies_drivers_and_campaign_budget(tmp_path: Path):
    """A head without CPUs charges each trial's driver to its workers; STRICT_PACK keeps a trial on one node;
    tune.time_budget_s caps the wall time and GPU-hours."""
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump({
        "cluster_name": "t", "max_workers": 4, "provider": {"type": "gcp"}, "head_node_type": "h",
        "available_node_types": {"h": {"resources": {"CPU": 0}, "node_config": {}},
                                 "g4": {"resources": {"CPU": 4, "GPU": 4}, "node_config": {}, "max_workers": 3}}}))
    base = ["resources.num_workers=3", "resources.cpus_per_worker=1", "tune.trial_cpus=0.5", "tune.max_concurrent_trials=4"]
    p = plan(BACKBONES, cluster, base)
    g4 = p.node_types[0]
    assert not p.drivers_on_head
    # per worker 1 + 0.5/3 CPU -> 3 fit 4 CPUs; 3 nodes pool 9 slots -> 3 trials of 3 workers; 3 running need 3 nodes
    assert (g4.workers_per_node, g4.trials_per_node, g4.trials_at_once, g4.running, g4.nodes) == (3, 1, 3, 3, 3)
    assert "charged to the workers' CPUs" in _text(p)
    strict = plan(BACKBONES, cluster, [*base, "resources.placement_strategy=STRICT_PACK", "resources.num_workers=2"])
    assert (strict.node_types[0].workers_per_node, strict.node_types[0].trials_per_node,
            strict.node_types[0].trials_at_once, strict.node_types[0].nodes) == (3, 1, 3, 3)
    capped = plan(BACKBONES, cluster, [*base, "tune.time_budget_s=1800"])
    n = capped.node_types[0]
    assert n.wall_hours == pytest.approx(0.5)  # 5 waves x 600 s > 1800 s
    assert n.gpu_hours == pytest.approx(3 * 3 * 1800 / 3600)  # 3 running trials x 3 GPUs, until the budget


def test_no_node_fits_names_the_short_resource():
    with pytest.raises(NoFitError, match=r"a worker needs 16 GPU and gpu_8x has 8"):
        plan(BACKBONES, AWS, ["resources.gpus_per_worker=16"])
    with pytest.raises(NoFitError, match=r"a trial needs 32 workers x 1 GPU = 32 GPU and gpu_8x can launch 2 x 8 = 16"):
        plan(BACKBONES, AWS, ["resources.num_workers=32"])
    with pytest.raises(NoFitError, match=r"= 16 GPU on one node \(STRICT_PACK\) and gpu_8x has 8"):
        plan(BACKBONES, AWS, ["resources.num_workers=16", "resources.placement_strategy=STRICT_PACK"])


def test_cli_refuses_in_one_line_with_exit_2():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "300"}
    out = subprocess.run([sys.executable, "-m", "unet_dist", "cluster", "plan", str(BACKBONES), str(AWS),
                          "--set", "resources.gpus_per_worker=16"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "a worker needs 16 GPU and gpu_8x has 8" in lines[0]


def test_cli_json_is_one_line(capsys: pytest.CaptureFixture[str]):
    assert main(["cluster", "plan", str(BACKBONES), str(AWS), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    data = json.loads(out[0])
    assert data["demand"]["trials"] == 14 and [n["nodes"] for n in data["node_types"]] == [4, 1]


@pytest.mark.parametrize("node, message", [
    ({"resources": {}, "node_config": {"InstanceType": "g9.mega"}}, "unknown instance type 'g9.mega' and no resources"),
    ({"resources": {"GPU": 1}, "node_config": {"machineType": "n1-standard-8"}}, "no resources.CPU; the gcp launcher"),
])
def test_node_type_without_known_resources_is_one_line(tmp_path: Path, node: dict, message: str):
    provider = "aws" if "InstanceType" in node["node_config"] else "gcp"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cluster_name": "t", "max_workers": 2, "provider": {"type": provider},
                                    "head_node_type": "h", "available_node_types": {
                                        "h": {"resources": {"CPU": 2}, "node_config": {}}, "w": node}}))
    with pytest.raises(ConfigError, match=message) as err:
        read_cluster(path)
    assert "\n" not in str(err.value) and "available_node_types.w" in str(err.value)


def test_explicit_resources_override_the_instance_table(tmp_path: Path):
    config = yaml.safe_load(AWS.read_text())
    config["available_node_types"]["gpu_1x"]["node_config"]["InstanceType"] = "g9.mega"
    config["available_node_types"]["gpu_1x"]["resources"] = {"CPU": 12, "GPU": 2}
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(config))
    worker = {n.name: n for n in read_cluster(path).workers}["gpu_1x"]
    assert (worker.shape.cpus, worker.shape.gpus, worker.instance) == (12, 2, "g9.mega")
