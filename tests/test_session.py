"""The Ray connection helper and the ``use_gpu=auto`` decision against real clusters: a CPU-only local Ray, and a
head whose autoscaler (Ray's fake multi-node provider) can launch a GPU node type that has no node yet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from tests.conftest import free_port
from tests.guard import kill_marked
import yaml

from unet_dist.config import load_config
from unet_dist.session import decide_gpu, gpu_node_types

FAKE_CLUSTER = {
    "cluster_name": "unet-dist-fake",
    "max_workers": 2,
    "idle_timeout_minutes": 1,
    "upscaling_speed": 1.0,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "auth": {"ssh_user": "ray"},
    "docker": {},
    "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
    "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
    "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    "head_node_type": "ray.head.default",
    "available_node_types": {
        "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        "gpu.worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        "cpu.worker": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2},
    },
}


@pytest.fixture
def fake_autoscaling_head(tmp_path, ray_tmpdir):
    """``ray start --head`` with the fake multi-node autoscaler; stopped by killing the processes it started."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    config = tmp_path / "fake.yaml"
    config.write_text(yaml.safe_dump(FAKE_CLUSTER))
    mark = uuid.uuid4().hex
    port = free_port()
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "UNET_DIST_HEAD_MARK": mark}
    temp = ray_tmpdir / f"h{mark[:6]}"
    temp.mkdir()
    ray_bin = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray_bin, "start", "--head", "--num-cpus=0", f"--port={port}", "--node-ip-address=127.0.0.1",
                    f"--temp-dir={temp}", f"--autoscaling-config={config}", "--include-dashboard=false",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        kill_marked("UNET_DIST_HEAD_MARK", mark)


def test_gpu_node_types_from_a_launcher_config() -> None:
    assert gpu_node_types(FAKE_CLUSTER) == {"gpu.worker": 1.0}
    capped = {**FAKE_CLUSTER, "available_node_types": {"g": {"resources": {"GPU": 8}, "max_workers": 0}}}
    assert gpu_node_types(capped) == {} and gpu_node_types({}) == {}


@pytest.mark.ray
@pytest.mark.own_ray
def test_auto_chooses_gpu_when_the_autoscaler_can_launch_one(fake_autoscaling_head) -> None:
    import ray

    ray.init(address=fake_autoscaling_head)
    assert ray.cluster_resources().get("GPU", 0) == 0  # no GPU node is up
    decision = decide_gpu(load_config(None, ["resources.use_gpu=auto"]))
    assert decision.use_gpu is True
    assert "autoscaler can launch gpu.worker (1 GPU)" in decision.reason


@pytest.mark.ray
def test_auto_chooses_cpu_on_a_cpu_only_cluster(ray_local) -> None:
    decision = decide_gpu(load_config(None, ["resources.use_gpu=auto"]))
    assert decision.use_gpu is False and "training on CPU" in decision.reason and "no GPU" in decision.reason
    assert decide_gpu(load_config(None, ["resources.use_gpu=true"])).use_gpu is True


def test_no_address_means_a_local_ray_of_its_own(monkeypatch) -> None:
    from unet_dist.session import LOCAL, resolve_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(load_config(None, [])) == LOCAL
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # what `ray job submit` sets for a job's driver
    assert resolve_address(load_config(None, [])) == "10.0.0.1:6379"
    assert resolve_address(load_config(None, ["resources.address=auto"])) == "auto"


def test_a_running_local_cluster_is_noticed_not_joined(tmp_path, monkeypatch) -> None:
    import socket

    from unet_dist.session import running_local_cluster

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert running_local_cluster() is None
    (tmp_path / "ray").mkdir()
    with socket.socket() as gcs:
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        address = f"127.0.0.1:{gcs.getsockname()[1]}"
        (tmp_path / "ray" / "ray_current_cluster").write_text(address)
        assert running_local_cluster() == address
    assert running_local_cluster() is None  # a stale address file (a head that was killed) is not a cluster


def test_a_dead_cluster_address_is_one_line_in_seconds(synthetic_dataset, tmp_path) -> None:
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "unet_dist", "train", "--data", synthetic_dataset,
                          "--storage", str(tmp_path / "runs"), "--address", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert time.monotonic() - start < 30
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in line and "Connection refused" in line
    assert not [f for f in (tmp_path / "runs").rglob("*") if f.is_file()]  # no run record, nothing half-written
