"""jobs/collect.py (the `ray job submit` entrypoint) on a real campaign's storage: leaderboard, champion and report
land where it says, in one JSON line; a user error is one line and exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import REPO


def _job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "jobs" / "collect.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_collect_job_writes_leaderboard_champion_and_report(collect_tree: dict, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    shutil.copytree(collect_tree["local"], storage)
    proc = _job("--storage", str(storage), "--export", str(tmp_path / "models"), "--top", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    rows = pq.read_table(storage / "leaderboard").to_pylist()
    assert len(rows) == 5 and out["best"]["trial"] == rows[0]["trial"]
    alias = json.loads((tmp_path / "models" / "champion" / "alias.json").read_text())
    assert alias["value"] == rows[0]["best_value"] and (tmp_path / "models" / alias["model"] / "model.json").exists()
    assert out["report_of"] == str(storage / collect_tree["campaign"])
    report = Path(out["report"])
    assert report == storage / "reports" / f"{collect_tree['campaign']}.html"
    html = report.read_text()
    assert html.lower().startswith("<!doctype html>") and "data:image/png;base64," in html

    again = _job("--storage", str(storage))
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["champion"] is None


def test_collect_job_on_missing_storage_is_one_line(tmp_path: Path) -> None:
    proc = _job("--storage", str(tmp_path / "nothing-here"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
