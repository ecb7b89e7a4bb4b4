"""A campaign whose driver is killed (SIGKILL, its local Ray with it) continues with --resume: finished trials are
not rerun, the interrupted trial continues from its newest complete checkpoint, no reported epoch is trained twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from unet_dist.runs import CampaignDir
from unet_dist.storage import resolve

EPOCHS = 4


def _tune(config: Path, storage: Path, ray_tmp: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "unet_dist", "tune", "--config", str(config), "--storage", str(storage),
                             "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _ready_to_kill(campaign: CampaignDir) -> bool:
    """One trial finished and another has a complete checkpoint for every epoch it reported."""
    trials = campaign.trials()
    statuses = [(run.read_record() or {}).get("status") for run in trials.values()]
    running = [run for run, s in zip(trials.values(), statuses) if s == "running"]
    return "finished" in statuses and any(
        (rows := run.metrics()) and set(run.checkpoints()) >= {r["epoch"] for r in rows} for run in running)


@pytest.mark.slow
@pytest.mark.timeout(900)  # two campaign runs, each up to its own 400 s deadline
@pytest.mark.ray
def test_killed_campaign_resumes_without_rerunning(synthetic_dataset, tmp_path, own_ray_tmpdir) -> None:
    config = tmp_path / "campaign.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"dataset": synthetic_dataset, "crop_size": 64, "batch_size": 2},
        "model": {"base_filters": 8, "depth": 3},
        "train": {"epochs": EPOCHS, "log_images": 0, "num_to_keep": 1},
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5, "torch_threads": 1, "use_gpu": False},
        "tune": {"name": "killed", "scheduler": "fifo", "num_samples": 1,
                 "search_space": {"model.unpooling": {"grid": ["transpose", "bilinear", "nearest"]}}},
    }))
    campaign = CampaignDir(resolve(tmp_path / "runs") / "killed")
    proc = _tune(config, tmp_path / "runs", own_ray_tmpdir)
    deadline = time.time() + 400
    while not (campaign.exists() and _ready_to_kill(campaign)):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() is not None else "timeout"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {tid: (run.read_record()["status"], len(run.metrics())) for tid, run in campaign.trials().items()}
    assert "finished" in {s for s, _ in before.values()}

    again = _tune(config, tmp_path / "runs", own_ray_tmpdir)  # the same name without --resume: refused, one line
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and "already exists: add --resume" in err and "Traceback" not in err

    resumed = _tune(config, tmp_path / "runs", own_ray_tmpdir, "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["counts"] == {"finished": 3}
    for tid, run in campaign.trials().items():
        events = run.events()
        ends = [e["epoch"] for e in events if e["event"] == "epoch_end"]
        assert sorted(ends) == list(range(EPOCHS)), (tid, ends)  # every epoch reported exactly once
        starts = [e for e in events if e["event"] == "start"]
        if before.get(tid, ("", 0))[0] == "finished":
            assert len(starts) == 1, (tid, starts)  # finished before the kill: not rerun
        elif before.get(tid, ("", 0))[1] > 0:
            assert starts[-1]["start_epoch"] == before[tid][1], (tid, starts)  # continued after its last checkpoint
    assert CampaignDir(resolve(tmp_path / "runs") / "killed").read_record()["resumed_at"]
