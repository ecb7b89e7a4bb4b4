"""The `unet-dist` command line as a user runs it: a real subprocess, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unet_dist", *args], capture_output=True, text=True, timeout=timeout)


def test_help_explains_every_command():
    out = run("--help").stdout
    for cmd in ("models", "config", "synthetic", "ingest", "train", "tune", "demo"):
        assert cmd in out
    assert "--set" in run("train", "--help").stdout
    assert "--resume" in run("tune", "--help").stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["config", "--set", "model.unpooling=bicubic"], "model.unpooling: unknown unpooling 'bicubic'; choose one of: transpose"),
        (["config", "--set", "model.backbone=resnet9"], "model.backbone: unknown backbone 'resnet9'"),
        (["config", "--set", "model.backbone=resnet18", "--set", "model.unpooling=maxunpool"], "maxunpool"),
        (["config", "--config", "/nonexistent.yaml"], "config file '/nonexistent.yaml' not found"),
        (["train"], "data.dataset is empty"),
        (["tune", "--set", "tune.search_space={model.unpoling: {choice: [transpose]}}"],
         "tune.search_space.model.unpoling: unknown key"),
        (["tune", "--set", "tune.search_space={model.unpooling: {grid: [maxunpool]}, model.backbone: {grid: [resnet18]}}"],
         "impossible"),
        (["tune", "--set", "tune.scheduler=pbt2"], "tune.scheduler: unknown scheduler 'pbt2'; choose one of: asha"),
        (["tune", "--set", "tune.search_space={train.lr: {choice: [0.01]}}"], "data.dataset is empty"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, expected):
    res = run(*args)
    assert res.returncode == 2, res.stderr
    assert expected in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stderr.strip().count("\n") == 0


def test_config_prints_resolved_yaml_without_secrets():
    res = run("config", "--set", "model.depth=5", "--set", "storage.secret_access_key=hunter2")
    assert res.returncode == 0, res.stderr
    assert "depth: 5" in res.stdout and "hunter2" not in res.stdout


def test_models_json_lists_registry():
    res = run("models", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert {"scratch", "vgg16_bn", "resnet34"} <= set(info["backbones"])
    assert set(info["unpooling"]) == {"transpose", "bilinear", "nearest", "pixelshuffle", "maxunpool"}


def test_ingest_results_on_stdout_progress_on_stderr_and_json_alone(tmp_path):
    from unet_dist.data.synthetic import generate

    raw = generate(str(tmp_path / "raw"), n=4, size=24)
    res = run("ingest", raw, str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    assert "mean / std" in res.stdout and "mean / std" not in res.stderr
    res = run("ingest", raw, str(tmp_path / "b"), "--json", "--folds", "2", "--no-stratify")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["counts"]["total"] == 4
    manifest = json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert manifest["folds"]["counts"] == [2, 2] and manifest["split_by"]["stratified_by"] == []


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("kind", ["malicious", "truncated"])
def test_evaluate_refuses_a_bad_checkpoint_in_one_line(kind, tmp_path, capsys):
    import torch

    marker, state = tmp_path / "pwned", tmp_path / "model-best.pt"
    if kind == "malicious":
        torch.save({"model": {}, "payload": _Payload(str(marker))}, state)
    else:
        torch.save({"model": {"w": torch.zeros(64, 64)}, "epoch": 1}, state)
        state.write_bytes(state.read_bytes()[:300])
    if kind == "malicious":  # as the user runs it
        proc = run("evaluate", str(state))
        code, err = proc.returncode, proc.stderr.strip()
    else:  # the same command in this process: a subprocess costs seconds of imports
        from unet_dist.cli import main

        code, err = main(["evaluate", str(state)]), capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Traceback" not in err, err
    assert str(state) in err and "weights_only=False" not in err and not marker.exists()
    assert ("refused to load" if kind == "malicious" else "truncated or corrupt") in err


def test_json_stdout_holds_the_json_line_alone(capsys):
    """Ray's driver prints raylet warnings to stdout whatever log_to_driver says (e.g. when trials run concurrently
    on a small node); under --json they go to stderr and stdout stays one JSON line. Printed here by Ray's own
    function for them."""
    import argparse

    from ray._private.worker import print_to_stdstream

    from unet_dist.cli.common import emit, json_only_stdout

    warning = "WARNING: 8 PYTHON worker processes have been started on node: x"
    with json_only_stdout(argparse.Namespace(json=True)):
        print_to_stdstream({"lines": [warning], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        emit('{"status": "finished"}')
    out, err = capsys.readouterr()
    assert json.loads(out) == {"status": "finished"} and warning in err
    other = "(a different line: Ray deduplicates repeated and similar ones)"
    with json_only_stdout(argparse.Namespace(json=False)):  # a terminal user still sees Ray's warning where Ray put it
        print_to_stdstream({"lines": [other], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert other in capsys.readouterr().out
