"""`ray job submit -- python jobs/train.py` against a real Ray cluster with a dashboard, as README shows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster_with_dashboard(ray_tmpdir, monkeypatch):
    """A 2-CPU head with the job API on 127.0.0.1; the venv's python is first on PATH (as `ray start` would see)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    port = _free_port()
    (ray_tmpdir / "ray").mkdir(exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port,
        "temp_dir": str(ray_tmpdir),
    })
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        cluster.shutdown()


@pytest.mark.ray
def test_ray_job_submit_trains(cluster_with_dashboard, tmp_path):
    from unet_dist.data.synthetic import demo_dataset

    dataset = demo_dataset(str(tmp_path / "synth"), n=12, size=64)
    runs = tmp_path / "runs"
    cmd = [
        str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", cluster_with_dashboard,
        "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}),
        "--", "python", "jobs/train.py", "--config", "jobs/configs/train.yaml", "--no-progress",
        "--set", f"data.dataset={dataset}", "--set", f"storage.uri={runs}", "--set", "train.epochs=2",
        "--set", "model.depth=3", "--set", "model.base_filters=8", "--set", "data.crop_size=64",
        "--set", "data.num_crops_per_image=1", "--set", "resources.num_workers=2", "--set", "resources.cpus_per_worker=0.5",
        "--set", "resources.torch_threads=1", "--set", "resources.use_gpu=false",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_ADDRESS": ""})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads(next(line for line in res.stdout.splitlines() if line.startswith('{"name"')))
    assert summary["epochs"] == 2 and summary["best_checkpoint"]
    assert Path(summary["best_checkpoint"]).is_dir()
    assert summary["run_dir"].startswith(str(runs))


@pytest.mark.parametrize(("overrides", "key", "message"), [
    (["model.backbone=resnet9"], "model.backbone", "unknown backbone 'resnet9'; choose one of: scratch"),
    (["model.backbone=resnet18", "model.unpooling=maxunpool"], "model.unpooling",
     "'maxunpool' cannot be used with backbone 'resnet18'"),
], ids=["unknown-backbone", "resnet-maxunpool"])
def test_job_refuses_impossible_model_before_ray_starts(tmp_path: Path, overrides: list[str], key: str,
                                                        message: str) -> None:
    ray_tmp = tmp_path / "ray-tmp"
    ray_tmp.mkdir()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": "",
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "jobs/train.py", "--config", "jobs/configs/train.yaml", "--no-progress"]
    cmd += [arg for o in overrides for arg in ("--set", o)]
    start = time.monotonic()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: ") and message in lines[0], res.stderr[-2000:]
    assert res.stdout == "" and "Traceback" not in res.stderr
    assert not any(s in res.stderr for s in ("Ray instance", "Ray cluster", "ray.init"))
    assert list(ray_tmp.iterdir()) == []
    assert elapsed < 20
