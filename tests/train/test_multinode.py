"""Training across several Ray nodes (ray.cluster_utils.Cluster on one machine), workers spread over nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import small_config  # tests/train/conftest.py


@pytest.fixture
def three_node_cluster(ray_tmpdir):
    """A CPU-less head plus two 1-CPU worker nodes, like a head node with two workers on a real cluster."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    (ray_tmpdir / "ray").mkdir(exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": str(ray_tmpdir)})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster, {n.node_id for n in nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
def test_two_workers_spread_over_two_nodes(three_node_cluster, synthetic_dataset, tmp_path):
    from unet_dist.train import fit

    _, worker_nodes = three_node_cluster
    cfg = small_config(synthetic_dataset, str(tmp_path / "runs"), "train.epochs=2", "data.crop_size=64",
                       "resources.placement_strategy=SPREAD")
    summary = fit(cfg, progress=False)
    assert summary.epochs == 2 and summary.best_checkpoint
    events = [json.loads(line) for line in (Path(summary.run_dir) / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    assert start["world_size"] == 2
    assert set(start["nodes"]) == worker_nodes, "SPREAD should place one worker on each worker node"
