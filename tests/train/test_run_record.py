"""run.json for failed and interrupted runs (a finished one: tests/train/test_fit.py), read back through the run module; Ctrl-C and resume;
errors found before Ray starts are never retried on workers."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from tests.guard import marked_pids

from unet_dist.runs import RunDir
from unet_dist.storage import resolve
from unet_dist.train import TrainingFailed, fit
from unet_dist.train.fault import FAULT_ENV

COMMON = ("data.crop_size=64", "resources.num_workers=1", "train.warmup_epochs=0")


@pytest.mark.ray
def test_a_user_error_on_a_worker_fails_once_and_its_record_names_it(small_config, ray_local, synthetic_dataset, tmp_path,
                                                                    monkeypatch) -> None:
    """A data error in epoch 1 with restarts allowed: no retry (one worker group), and one line naming the worker's
    exception, in the error raised and in run.json, which keeps the epoch before it as the best."""
    monkeypatch.setenv(FAULT_ENV, "rank=0,epoch=1,step=0,raise=shard part-0003 is unreadable,kind=data")
    cfg = small_config(synthetic_dataset, str(tmp_path), *COMMON, "train.epochs=3", "train.name=broken", "train.max_failures=3")
    start = time.time()
    with pytest.raises(TrainingFailed) as err:
        fit(cfg, progress=False)
    line = str(err.value)
    assert "DataError: shard part-0003 is unreadable" in line and "\n" not in line and "--name broken" in line
    run = RunDir(resolve(tmp_path) / "broken")
    assert [e["event"] for e in run.events()] == ["start", "epoch_end"]  # one worker group: no retry
    record = run.read_record()
    assert record["status"] == "failed" and "shard part-0003 is unreadable" in record["error"]
    assert record["epochs"] == 1 and record["best_epoch"] == 0 and time.time() - start < 60


@pytest.mark.ray
def test_ctrl_c_stops_cleanly_resume_finishes_and_an_extension_keeps_the_best(synthetic_dataset, tmp_path, own_ray_tmpdir,
                                                                              ray_local, monkeypatch) -> None:
    EPOCHS = 8  # enough that the interrupt lands mid-run, even when an epoch takes a fraction of a second
    mark = uuid.uuid4().hex  # in the environment of the CLI and of every Ray process it starts
    env = {**os.environ, "UNET_DIST_TEST_MARK": mark, "RAY_TMPDIR": own_ray_tmpdir, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    sets = (*COMMON, "model.base_filters=8", "model.depth=3", "resources.cpus_per_worker=0.5", "resources.torch_threads=1",
            "resources.use_gpu=false")
    cmd = [sys.executable, "-m", "unet_dist", "train", "--data", synthetic_dataset, "--storage", str(tmp_path / "runs"),
           "--name", "r", "--epochs", str(EPOCHS), "--json", "--workers", "1", *[a for kv in sets for a in ("--set", kv)]]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = RunDir(resolve(tmp_path / "runs" / "r"))
    deadline = time.time() + 240
    while not run.metrics() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert run.metrics(), "no epoch finished before the interrupt"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--name r" in err and "Traceback" not in err
    deadline = time.time() + 30
    while marked_pids("UNET_DIST_TEST_MARK", mark) and time.time() < deadline:
        time.sleep(0.5)
    assert not marked_pids("UNET_DIST_TEST_MARK", mark), "Ray processes outlived the interrupted command"
    record = run.read_record()
    assert record["status"] == "stopped" and 1 <= record["epochs"] < EPOCHS

    # the same command again resumes: here through fit() on the suite's Ray (a second CLI start-up adds ~12 s; the
    # CLI's own output with --json is checked in tests/test_hermetic.py)
    from unet_dist.config import load_config

    base = [f"data.dataset={synthetic_dataset}", f"storage.uri={tmp_path / 'runs'}", "train.name=r", "resources.num_workers=1",
            *sets]
    fit(load_config(None, [*base, f"train.epochs={EPOCHS}"]), progress=False)
    record = run.read_record()
    assert record["status"] == "finished" and record["epochs"] == EPOCHS and record["resumed_at"]
    assert [r["epoch"] for r in run.metrics()] == list(range(EPOCHS))

    # the finished run extended by one epoch with an absurd LR (--set train.epochs=9 --set train.lr=1000): its run.json
    # names the old best, its epochs and start time from the first write of the resume on (gc in that window keeps the
    # best), and the worse new epoch never replaces that best
    from unet_dist.train import trainer

    before, at_start, real_run = record, [], trainer._run

    def spy(*a, **kw):  # the record as the resumed training starts, before its first new epoch
        at_start.append(run.read_record())
        return real_run(*a, **kw)

    monkeypatch.setattr(trainer, "_run", spy)
    fit(load_config(None, [*base, f"train.epochs={EPOCHS + 1}", "train.lr=1000"]), progress=False)
    start = at_start[0]
    assert start["status"] == "running" and len(start["resumed_at"]) == len(before["resumed_at"]) + 1
    assert start["epochs_planned"] == EPOCHS + 1
    for key in ("best_checkpoint", "best", "best_epoch", "epochs", "started_at"):
        assert start[key] == before[key], key
    rows = run.metrics()
    assert [r["epoch"] for r in rows] == list(range(EPOCHS + 1))
    assert not rows[-1]["val_image_mean_iou"] > rows[before["best_epoch"]]["val_image_mean_iou"]  # the default monitor
    record = run.read_record()
    assert record["status"] == "finished" and record["epochs"] == EPOCHS + 1
    assert record["best_epoch"] == before["best_epoch"] and record["best_checkpoint"] == before["best_checkpoint"]


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _bad_weights(kind: str, tmp_path: Path) -> tuple[Path, Path]:
    weights, marker = tmp_path / "enc.pt", tmp_path / "pwned"
    if kind == "not_a_state_dict":
        torch.save(["not", "tensors"], weights)
    elif kind == "malicious":
        weights.write_bytes(pickle.dumps({"conv.weight": _Payload(str(marker))}))
    return weights, marker


def _check_one_line(err: str, marker: Path) -> None:
    err = err.strip()
    assert err.count("\n") == 0 and "model.weights" in err and "Traceback" not in err, err
    assert "weights_only=False" not in err and not marker.exists()


def test_malicious_weights_fail_fast_before_ray_as_the_user_sees_it(synthetic_dataset, tmp_path) -> None:
    """A real `unet-dist train` process: exit 2 in seconds, one line, the pickle never ran, no Ray started."""
    weights, marker = _bad_weights("malicious", tmp_path)
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "unet_dist", "train", "--data", synthetic_dataset, "--storage",
                           str(tmp_path / "runs"), "--set", f"model.weights={weights}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and time.time() - start < 10, proc.stderr
    _check_one_line(proc.stderr, marker)
    assert not (tmp_path / "ray").exists(), "Ray was started before the weights were checked"


@pytest.mark.parametrize("kind", ["missing", "not_a_state_dict"])
def test_bad_weights_fail_fast_before_ray(kind, synthetic_dataset, tmp_path, monkeypatch, capsys) -> None:
    """The other bad files through the same command in this process (a subprocess costs seconds of imports)."""
    import ray

    from unet_dist.cli import main

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the weights were checked")

    monkeypatch.setattr(ray, "init", no_ray)
    weights, marker = _bad_weights(kind, tmp_path)
    assert main(["train", "--data", synthetic_dataset, "--storage", str(tmp_path / "runs"),
                 "--set", f"model.weights={weights}"]) == 2
    _check_one_line(capsys.readouterr().err, marker)
