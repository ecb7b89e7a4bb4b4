"""`unet-dist gc --yes` between a stop and a resume, on the real CLI: a Ctrl-C'd run resumes with `train --name`, a
finished run is extended with `--set train.epochs=N+2`, and a campaign with an errored trial finishes with
`tune --resume` (Ray refuses to resume a run whose snapshot lists a deleted checkpoint). Budget: ~3-4 min (slow)."""

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

from unet_dist.cli import main
from unet_dist.collect.ray_snapshot import SNAPSHOT_FILE, referenced
from unet_dist.runs import CampaignDir, RunDir
from unet_dist.storage import resolve
from unet_dist.train.fault import FAULT_ENV

SMALL = ("data.crop_size=64", "train.warmup_epochs=0", "train.num_to_keep=2", "train.log_images=0",
         "model.base_filters=8", "model.depth=3", "resources.cpus_per_worker=0.5", "resources.torch_threads=1",
         "resources.use_gpu=false")


def _env(ray_tmp: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "OMP_NUM_THREADS": "1", **extra}
    env.pop("RAY_ADDRESS", None)
    env.pop(FAULT_ENV, None)
    return {**env, **extra}


def _train(dataset: str, storage: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "unet_dist", "train", "--data", dataset, "--storage", str(storage), "--name", "r",
            "--json", "--workers", "1", *[a for kv in (*SMALL, f"train.epochs={epochs}") for a in ("--set", kv)]]


def _tracked(run: RunDir) -> set[str]:
    snap = run.loc / SNAPSHOT_FILE
    return referenced(json.loads(snap.read_text())) if snap.exists() else set()


def _gc(capsys, storage: Path) -> dict:
    assert main(["gc", str(storage), "--yes", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _all_tracked_exist(run: RunDir) -> bool:
    return all((run.loc / name).exists() for name in _tracked(run))


@pytest.mark.slow
@pytest.mark.ray
def test_gc_then_resume_a_stopped_run_and_extend_a_finished_one(synthetic_dataset, tmp_path, own_ray_tmpdir, capsys) -> None:
    EPOCHS = 8
    storage, env = tmp_path / "runs", _env(own_ray_tmpdir)
    run = RunDir(resolve(storage / "r"))
    proc = subprocess.Popen(_train(synthetic_dataset, storage, EPOCHS), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while len(_tracked(run)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert run.read_record()["status"] == "stopped" and len(_tracked(run)) >= 2
    tracked = _tracked(run)
    _gc(capsys, storage)
    assert _all_tracked_exist(run) and _tracked(run) == tracked

    done = subprocess.run(_train(synthetic_dataset, storage, EPOCHS), env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]  # before the fix: CheckpointManagerInitializationError
    assert run.read_record()["status"] == "finished" and run.read_record()["epochs"] == EPOCHS

    _gc(capsys, storage)  # a finished run: its snapshot is rewritten before anything it lists goes
    assert _all_tracked_exist(run) and f"epoch_{EPOCHS - 1:04d}" in _tracked(run)
    more = subprocess.run(_train(synthetic_dataset, storage, EPOCHS + 2), env=env, capture_output=True, text=True,
                          timeout=400)
    assert more.returncode == 0, more.stderr[-2000:]
    record = run.read_record()
    assert record["status"] == "finished" and record["epochs"] == EPOCHS + 2
    assert [r["epoch"] for r in run.metrics()] == list(range(EPOCHS + 2))


@pytest.mark.slow
@pytest.mark.ray
def test_gc_then_tune_resume_finishes_an_errored_trial(synthetic_dataset, tmp_path, own_ray_tmpdir, capsys) -> None:
    config, storage = tmp_path / "campaign.yaml", tmp_path / "runs"
    config.write_text(yaml.safe_dump({
        "data": {"dataset": synthetic_dataset, "crop_size": 64, "batch_size": 2},
        "model": {"base_filters": 8, "depth": 3},
        "train": {"epochs": 3, "log_images": 0, "num_to_keep": 2, "warmup_epochs": 0, "max_failures": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "torch_threads": 1, "use_gpu": False},
        "tune": {"name": "errs", "scheduler": "fifo", "num_samples": 1,
                 "search_space": {"model.unpooling": {"grid": ["transpose", "bilinear"]}}},
    }))
    tune = [sys.executable, "-m", "unet_dist", "tune", "--config", str(config), "--storage", str(storage), "--json"]
    fault = {FAULT_ENV: "rank=0,epoch=2,step=0,raise=boom in trial,if=model.unpooling:bilinear"}
    first = subprocess.run(tune, env=_env(own_ray_tmpdir, **fault), capture_output=True, text=True, timeout=500)
    campaign = CampaignDir(resolve(storage) / "errs")
    trials = campaign.trials()
    errored = [r for r in trials.values() if r.read_record()["status"] == "error"]
    assert len(errored) == 1 and len(_tracked(errored[0])) >= 2, first.stderr[-3000:]
    tracked = _tracked(errored[0])
    _gc(capsys, storage)
    assert _all_tracked_exist(errored[0]) and _tracked(errored[0]) == tracked

    resumed = subprocess.run([*tune, "--resume"], env=_env(own_ray_tmpdir), capture_output=True, text=True, timeout=500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["counts"] == {"finished": 2}, summary
    assert errored[0].read_record()["epochs"] == 3
