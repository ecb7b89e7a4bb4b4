"""Job entrypoints refuse an impossible model before Ray starts (the submission itself, against a real head started
with `ray start`, is in tests/cluster/test_job_submit.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO


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
