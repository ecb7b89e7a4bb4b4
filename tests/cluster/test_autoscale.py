"""Autoscaling with ``cluster/local-fake.yaml``: a campaign submitted to a head with no CPUs makes Ray's autoscaler
launch worker nodes (Ray's fake multi-node provider: extra raylets on this machine), its trials train on them,
and the nodes leave after the idle timeout. Node counts come from Ray's state API, trial placement from storage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import free_port
import yaml

from unet_dist.runs import CampaignDir
from unet_dist.storage import resolve

REPO = Path(__file__).resolve().parents[2]
FAKE_CONFIG = REPO / "cluster" / "local-fake.yaml"


def _autoscaling_config(tmp_path: Path, gcs_port: int) -> Path:
    """The shipped config, told where this test's head listens (the fake provider assumes port 6379 otherwise)."""
    config = yaml.safe_load(FAKE_CONFIG.read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{gcs_port}"
    path = tmp_path / "local-fake.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _workers(head: Any) -> set[str]:
    return {n["node_id"] for n in head.alive_nodes() if not n["is_head_node"]}


def _diagnose(head: Any, job: str) -> str:
    """The job's own log lines and the autoscaler's last status, for a failure message."""
    logs = head.ray("job", "logs", job, check=False).stdout
    own = [line for line in logs.splitlines() if "(raylet" not in line and "[state-dump]" not in line]
    monitor = "".join(p.read_text() for p in Path(head.temp_dir).glob("session_*/logs/monitor.log"))
    return "\n".join(own[-40:]) + "\n--- autoscaler ---\n" + monitor[monitor.rfind("Autoscaler status"):][:2500]


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~130 s, plus waiting for idle nodes to leave
@pytest.mark.ray
def test_campaign_scales_out_and_back(head_factory, synthetic_dataset: str, tmp_path: Path) -> None:
    """Budget 6 min: 2 concurrent trials (0.1 + 1 CPU each) x 2 epochs need both 2-CPU worker nodes; then the
    nodes time out."""
    fake = yaml.safe_load(FAKE_CONFIG.read_text())
    max_nodes = fake["available_node_types"]["cpu.2"]["max_workers"]
    idle_s = fake["idle_timeout_minutes"] * 60
    runs = tmp_path / "runs"
    campaign_yaml = tmp_path / "campaign.yaml"
    campaign_yaml.write_text(yaml.safe_dump({
        "data": {"dataset": synthetic_dataset, "crop_size": 64, "batch_size": 2},
        "model": {"base_filters": 8, "depth": 3},
        "train": {"epochs": 2, "log_images": 0, "num_to_keep": 1},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "torch_threads": 1, "use_gpu": False},
        "tune": {"name": "scaled", "scheduler": "fifo", "num_samples": 1, "max_concurrent_trials": 2,
                 "search_space": {"model.unpooling": {"grid": ["transpose", "bilinear"]}}},
    }))
    port = free_port()
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    with head_factory(0, gcs_port=port, autoscaling_config=_autoscaling_config(tmp_path, port), extra_env=env) as head:
        assert _workers(head) == set()
        # No --working-dir: fake nodes share the head's session dir, and each new node re-unpacks the package the
        # job runs in (its cwd vanishes). The venv's editable install serves every fake node instead.
        res = head.ray("job", "submit", "--no-wait", "--", "python", str(REPO / "jobs" / "tune.py"),
                       "--config", str(campaign_yaml), "--storage", str(runs), "--no-progress")
        job = next(w.strip("'") for w in res.stdout.split() if w.strip("'").startswith("raysubmit_"))
        seen: set[str] = set()
        most, first_node_s, t0 = 0, None, time.monotonic()
        deadline = t0 + 600
        while (status := head.job_status(job)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            workers = _workers(head)
            seen |= workers
            most = max(most, len(workers))
            first_node_s = first_node_s or (workers and time.monotonic() - t0) or None
            assert time.monotonic() < deadline, _diagnose(head, job)
            time.sleep(1)
        assert status == "SUCCEEDED", _diagnose(head, job)
        summary = json.loads(next(line for line in head.ray("job", "logs", job).stdout.splitlines()[::-1]
                                  if line.startswith('{"name"')))
        assert summary["status"] == "finished" and summary["counts"] == {"finished": 2}
        assert 2 <= most <= max_nodes, (most, seen)

        campaign = CampaignDir(resolve(str(runs)) / "scaled")
        placed = {tid: {n for e in run.events() if e["event"] == "start" for n in e["nodes"]}
                  for tid, run in campaign.trials().items()}
        assert len(placed) == 2 and all(placed.values()), placed
        assert set().union(*placed.values()) <= seen, (placed, seen)  # every rank on an autoscaled worker node

        done = time.monotonic()
        while (left := _workers(head)) and time.monotonic() < done + idle_s + 90:
            time.sleep(1)
        assert left == set(), f"worker nodes still alive {idle_s + 90:.0f}s after the campaign: {left}"
        print(f"first worker node after {first_node_s:.0f}s, at most {most} at once, {len(seen)} launched in all, "
              f"campaign {done - t0:.0f}s, all released {time.monotonic() - done:.0f}s after it (idle timeout {idle_s:.0f}s)")
