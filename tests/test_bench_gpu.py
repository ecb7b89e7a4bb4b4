"""bench/gpu.py's CPU self-check: argument parsing, result writing, and the one-line skip on a machine without a GPU
(the GPU parts themselves run only on a lent GPU machine: BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_arguments_and_their_defaults(tmp_path: Path) -> None:
    gpu = _module()
    args = gpu.parse_args([])
    assert (args.size, args.batch, args.out) == (512, 8, REPO / "bench" / "results" / "gpu.json")
    args = gpu.parse_args(["--out", str(tmp_path / "g.json"), "--steps", "5", "--skip-cli"])
    assert args.steps == 5 and args.skip_cli and args.out == tmp_path / "g.json"
    with pytest.raises(SystemExit):
        gpu.parse_args(["--steps", "0"])


def test_results_are_written_whole(tmp_path: Path) -> None:
    gpu = _module()
    out = tmp_path / "deep" / "gpu.json"
    gpu.write_results(out, {"device": {"name": "NVIDIA H200"}, "throughput": [{"images_per_s": 1.5}]})
    gpu.write_results(out, {"device": {"name": "NVIDIA H200"}, "throughput": []})
    assert json.loads(out.read_text())["throughput"] == [] and [p.name for p in out.parent.iterdir()] == ["gpu.json"]
    assert gpu.bf16_peak("NVIDIA H100 80GB HBM3") == 989.4 and gpu.bf16_peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.bf16_peak("Tesla T4") is None


def test_without_a_gpu_it_skips_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the skip path does not apply")
    committed = REPO / "bench" / "results" / "gpu.json"
    before = committed.read_bytes() if committed.exists() else None
    out = tmp_path / "gpu.json"
    for argv in ([], ["--out", str(out)]):
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        assert len(lines) == 1 and "skipped" in lines[0] and "no CUDA GPU" in lines[0]
    assert not out.exists()
    assert (committed.read_bytes() if committed.exists() else None) == before
