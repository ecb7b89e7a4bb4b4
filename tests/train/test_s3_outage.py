"""Shared storage goes away mid-run: a real SeaweedFS S3 server is stopped and started again (same ports, same data
dir) while `unet-dist train` runs. A 30 s outage is ridden out by the storage retries (``storage.retry_s``); a longer
one ends the run with a one-line storage error, and ``--name`` resumes it. Either way every checkpoint folder left on
storage is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.test_storage_outage import BUCKET, KEY, SECRET, Weed, weed  # noqa: F401  (weed: the fixture)
from unet_dist.runs import RunDir, checkpoint_epoch, is_complete
from unet_dist.storage import resolve

EPOCHS = 6
TRAIN_SETS = ("model.base_filters=8", "model.depth=3", "data.batch_size=2", "data.val_batch_size=2", "data.crop_size=64",
              "resources.num_workers=2", "resources.cpus_per_worker=0.5", "resources.torch_threads=1",
              "resources.use_gpu=false", "train.lr=0.003", "train.warmup_epochs=1", "train.log_images=2",
              "train.num_to_keep=2")

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.ray, pytest.mark.timeout(900)]  # ~370 s each


def _train(weed: Weed, dataset: str, name: str, ray_tmp: str, *sets: str) -> subprocess.Popen[str]:
    """`unet-dist train` in its own process (its own local Ray), storage on ``weed``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    env.update(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_ENDPOINT_URL=weed.endpoint,
               AWS_DEFAULT_REGION="us-east-1", RAY_TMPDIR=ray_tmp)
    args = [sys.executable, "-m", "unet_dist.cli", "train", "--data", dataset, "--storage", f"s3://{BUCKET}/runs",
            "--name", name, "--epochs", str(EPOCHS), "--json"]
    for item in (*TRAIN_SETS, *sets):
        args += ["--set", item]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epochs(weed: Weed, name: str, n: int, proc: subprocess.Popen[str], timeout: float = 900) -> None:
    fs, path, deadline = weed.fs(), f"{BUCKET}/runs/{name}/metrics.jsonl", time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"the run ended before epoch {n}: {proc.communicate()[1][-3000:]}"
        try:
            if len(fs.cat_file(path).splitlines()) >= n:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"no {n} epochs on storage after {timeout} s")


def _check_finished(weed: Weed, name: str) -> dict[str, Any]:
    """The run finished with every epoch recorded once, and every checkpoint folder on storage is complete."""
    run = RunDir(resolve(f"s3://{BUCKET}/runs/{name}", weed.storage(retry_s=60)))
    record = run.read_record()
    assert record["status"] == "finished", record
    assert [r["epoch"] for r in run.metrics()] == list(range(EPOCHS))
    # SeaweedFS keeps an empty directory entry where Ray's num_to_keep deleted a checkpoint: only folders holding objects count.
    folders = [c for c in run.loc.ls() if c.name.startswith("epoch_") and any(f.startswith(c.path + "/") for f in c.fs.find(c.path))]
    assert folders and all(is_complete(f) for f in folders), [(f.name, is_complete(f)) for f in folders]
    assert all(checkpoint_epoch(f) == int(f.name.split("_")[1]) for f in folders)
    assert run.checkpoints()[EPOCHS - 1].name == f"epoch_{EPOCHS - 1:04d}"
    assert record["best_checkpoint"] in {f.uri for f in folders}
    return record


def test_30s_outage_is_ridden_out(weed: Weed, synthetic_dataset: str, own_ray_tmpdir: str) -> None:
    proc = _train(weed, synthetic_dataset, "ride", own_ray_tmpdir)
    try:
        _wait_for_epochs(weed, "ride", 2, proc)
        weed.stop()
        time.sleep(30)
        assert proc.poll() is None, f"the run did not survive the outage: {proc.communicate()[1][-3000:]}"
        weed.start()
        t_back = time.time()
        out, err = proc.communicate(timeout=900)
        print(f"run ended {time.time() - t_back:.0f} s after S3 came back")
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["epochs"] == EPOCHS
    assert "did not answer" not in err
    record = _check_finished(weed, "ride")
    assert not record.get("resumed_at"), "the run resumed by itself instead of riding the outage out"


def test_outage_past_retry_budget_ends_in_one_line_and_resumes(weed: Weed, synthetic_dataset: str, own_ray_tmpdir: str) -> None:
    proc = _train(weed, synthetic_dataset, "cut", own_ray_tmpdir, "storage.retry_s=10")
    try:
        _wait_for_epochs(weed, "cut", 2, proc)
        weed.stop()
        t_stop = time.time()
        out, err = proc.communicate(timeout=600)
        print(f"run ended {time.time() - t_stop:.0f} s into the outage")
        time.sleep(max(0.0, 40 - (time.time() - t_stop)))
    finally:
        proc.kill()
    last = err.strip().splitlines()[-1]
    print(last)
    assert proc.returncode == 2, err[-3000:]
    assert last.startswith("error: training run s3://outage/runs/cut stopped: ") and "did not answer" in last, last
    assert "--name cut" in last and "storage.retry_s=10" in last, last
    assert "Traceback" not in err

    weed.start()
    proc = _train(weed, synthetic_dataset, "cut", own_ray_tmpdir, "storage.retry_s=10")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    record = _check_finished(weed, "cut")
    assert len(record["resumed_at"]) == 1
    starts = [e for e in RunDir(resolve("s3://outage/runs/cut", weed.storage(retry_s=60))).events() if e["event"] == "start"]
    resumed = starts[-1]  # from the newest checkpoint completed before the outage (the one in flight was cut)
    assert resumed["start_epoch"] >= 1 and resumed["full_state"], starts
    assert resumed["resumed_from"].endswith(f"epoch_{resumed['start_epoch'] - 1:04d}"), starts
