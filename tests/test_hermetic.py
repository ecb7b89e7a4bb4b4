"""A Ray left running on the machine (a plain ``ray start --head``, default temp dir) changes nothing for the suite:
a training run and a 2-trial campaign through the CLI, as the other tests run them, finish in their usual time and
never reach the stray cluster. The stray head is stopped by its own pids, never with ``ray stop``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import RAY_NOISE
from tests.guard import free_ports, kill_marked, marked_pids
from unet_dist.runs import CampaignDir, RunDir
from unet_dist.storage import resolve

VENV_BIN = Path(sys.executable).parent
SMALL = ("model.base_filters=8", "model.depth=3", "data.crop_size=64", "data.batch_size=2", "train.warmup_epochs=0",
         "train.log_images=0", "resources.cpus_per_worker=0.5", "resources.torch_threads=1", "resources.use_gpu=false")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def stray_head() -> Iterator[dict[str, str]]:
    """``ray start --head`` as a user leaves it: default temp dir (/tmp/ray), its address file written, Ray's default
    GCS and dashboard ports where they are free. Ended by killing the pids that carry its environment mark."""
    mark = f"unet-dist-stray-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_TMPDIR", "TMPDIR", "RAY_ADDRESS")}
    env.update(UNET_DIST_STRAY_MARK=mark, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    spare = iter(free_ports(2, avoid={6379, 8265}))
    port = 6379 if _port_free(6379) else next(spare)
    dash = 8265 if _port_free(8265) else next(spare)
    address_file = Path("/tmp/ray/ray_current_cluster")
    before = address_file.read_text() if address_file.exists() else None
    res = subprocess.run([str(VENV_BIN / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
                          "--include-dashboard=true", f"--dashboard-port={dash}", "--disable-usage-stats"],
                         env=env, capture_output=True, text=True, timeout=120)
    try:
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "mark": mark}
    finally:
        kill_marked("UNET_DIST_STRAY_MARK", mark)
        assert not marked_pids("UNET_DIST_STRAY_MARK", mark)
        # `ray stop` would also remove the address file; a dead address there makes Ray's default attach hang
        if address_file.exists() and address_file.read_text() != before:
            if before is None:
                address_file.unlink()
            else:
                address_file.write_text(before)


def _stray_drivers(dashboard: str) -> list[str]:
    """Jobs the stray cluster has seen: every process that ever attached to it (a driver) is one."""
    from ray.util.state import list_jobs, list_nodes

    assert len(list_nodes(address=dashboard, raise_on_missing_output=False)) == 1
    return [j.job_id for j in list_jobs(address=dashboard, raise_on_missing_output=False)]


def _cli(*args: str, ray_tmp: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "unet_dist", *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.ray
def test_a_stray_ray_head_changes_nothing(stray_head, synthetic_dataset, tmp_path, own_ray_tmpdir) -> None:
    assert _stray_drivers(stray_head["dashboard"]) == []
    sets = [a for kv in SMALL for a in ("--set", kv)]

    start = time.monotonic()
    train = _cli("train", "--data", synthetic_dataset, "--storage", str(tmp_path / "runs"), "--name", "h",
                 "--epochs", "1", "--workers", "1", "--json", *sets, ray_tmp=own_ray_tmpdir, timeout=240)
    train_s = time.monotonic() - start
    assert train.returncode == 0, train.stderr[-3000:]
    assert RunDir(resolve(tmp_path / "runs" / "h")).read_record()["status"] == "finished"
    assert "stray" not in train.stderr and json.loads(train.stdout)  # --json: one JSON line, nothing else on stdout

    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"dataset": synthetic_dataset, "crop_size": 64, "batch_size": 2},
        "model": {"base_filters": 8, "depth": 3},
        "train": {"epochs": 1, "log_images": 0, "num_to_keep": 1, "warmup_epochs": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "torch_threads": 1, "use_gpu": False},
        "tune": {"name": "h", "scheduler": "fifo", "num_samples": 1, "max_concurrent_trials": 2,
                 "search_space": {"model.unpooling": {"grid": ["transpose", "bilinear"]}}},
    }))
    start = time.monotonic()
    tune = _cli("tune", "--config", str(config), "--storage", str(tmp_path / "camps"), "--json",
                ray_tmp=own_ray_tmpdir, timeout=300)
    tune_s = time.monotonic() - start
    assert tune.returncode == 0, tune.stderr[-3000:]
    trials = CampaignDir(resolve(tmp_path / "camps" / "h")).trials()
    assert len(trials) == 2 and all(run.read_record()["status"] == "finished" for run in trials.values())
    assert json.loads(tune.stdout)["status"] == "finished"
    noise = [line for out in (train.stderr, tune.stderr) for line in out.splitlines() if any(s in line for s in RAY_NOISE)]
    assert not noise, noise  # with --json, Ray's chatter stays in Ray's log files

    # Usual times on the 2-core machine: ~25 s and ~40 s (both trials at once); a worker-group timeout alone would be
    # 120 s a trial.
    print(f"train {train_s:.1f} s, campaign {tune_s:.1f} s")
    assert train_s < 90 and tune_s < 150, (train_s, tune_s)
    assert _stray_drivers(stray_head["dashboard"]) == [], "a test process attached to the stray Ray"
    # Ray's helpers inside the runs (Ray Train's placement-group cleaner) asked their own Ray, not "the" Ray of the
    # machine: without RAY_ADDRESS in the job they log this and query the stray (or fail) instead.
    logs = [p for p in Path(own_ray_tmpdir).glob("**/session_2*/logs/*") if p.is_file()]
    assert logs and not [p.name for p in logs if "multiple active Ray instances" in p.read_text(errors="replace")]


def test_weed_ports_never_collide_with_each_others_grpc_ports() -> None:
    from tests.guard import GRPC_OFFSET, weed_ports

    for _ in range(300):
        ports = weed_ports(5)
        used = ports + [p + GRPC_OFFSET for p in ports]
        assert len(set(used)) == len(used), ports  # no port is another one's gRPC twin, no two are equal
        assert all(p + GRPC_OFFSET <= 65535 for p in ports)


def test_free_ports_are_distinct_and_avoid_what_they_are_told() -> None:
    """A Ray head takes seven ports at once: one port handed out twice makes ``ray start`` refuse to run."""
    for _ in range(200):
        ports = free_ports(7, avoid={6379})
        assert len(set(ports)) == 7 and 6379 not in ports


def test_orphans_of_test_processes_stay_in_reach(tmp_path) -> None:
    """A marked process's unmarked children are found with it; once its parent is gone a child is still this
    session's (the subreaper), so the end-of-session guard reaches it."""
    from tests.guard import descendant_pids, kill_marked, marked_pids

    mark = uuid.uuid4().hex
    pidfile = tmp_path / "child"
    parent = subprocess.Popen(["bash", "-c", f"env -i sleep 300 & echo $! > {pidfile}; wait"],
                              env={**os.environ, "UNET_DIST_T": mark})
    while not pidfile.exists() or not pidfile.read_text().strip():
        time.sleep(0.05)
    child = int(pidfile.read_text())
    assert {parent.pid, child} <= set(marked_pids("UNET_DIST_T", mark))
    kill_marked("UNET_DIST_T", mark)
    parent.wait(timeout=10)
    assert not marked_pids("UNET_DIST_T", mark) and child not in descendant_pids()

    orphan = subprocess.run(["bash", "-c", "env -i sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True).stdout
    pid = int(orphan)
    assert pid in descendant_pids()  # its parent exited: re-parented here, not to init
    os.kill(pid, 9)
    os.waitpid(pid, 0)
