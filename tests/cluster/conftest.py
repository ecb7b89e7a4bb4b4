"""A real Ray head started the way a user starts one (``ray start --head --block``), for ``ray job submit`` tests.

The head runs in its own process group with its own short ``--temp-dir``, free ports on 127.0.0.1 and the
venv's ``python`` first on PATH (``ray job submit -- python ...`` runs the python the head sees). The head is
stopped by what started it: the process group is killed, then any straggler whose command line names the
head's temp dir (only processes of this head carry it). Never ``ray stop``: it stops every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.guard import free_ports

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")


def ray_env(temp_dir: str, **extra: str) -> dict[str, str]:
    """Environment for the head and the ``ray`` CLI: the venv first on PATH, no auth tokens, no S3 credentials
    (a job gets those through its runtime env, as on a real cluster), no inherited RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV and k != "RAY_ADDRESS"}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", RAY_TRAIN_ENABLE_PRINT_PATCH="0", RAY_TMPDIR=temp_dir, **extra)
    return env


@dataclass
class Head:
    """A running head: its addresses, temp dir, environment and log file."""

    proc: subprocess.Popen
    temp_dir: str
    gcs_address: str
    dashboard: str
    env: dict[str, str]
    log: Path
    submitted: list[str] = field(default_factory=list)

    def ray(self, *args: str, timeout: float = 120, check: bool = True, cwd: Path = REPO) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI against this head (``--address`` added for ``ray job`` commands), colours stripped."""
        cmd = [RAY, *args]
        if args and args[0] == "job":
            cmd[3:3] = ["--address", self.dashboard]
        res = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout)
        res.stdout, res.stderr = _ANSI.sub("", res.stdout), _ANSI.sub("", res.stderr)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args[:3])} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    def get(self, path: str) -> Any:
        """GET a dashboard API path, parsed JSON."""
        with urllib.request.urlopen(f"{self.dashboard}{path}", timeout=10) as r:
            return json.loads(r.read())

    def job_status(self, submission_id: str) -> str:
        return self.get(f"/api/jobs/{submission_id}")["status"]

    def wait_job(self, submission_id: str, timeout: float, until: tuple[str, ...] = ("SUCCEEDED", "FAILED", "STOPPED")) -> str:
        deadline = time.monotonic() + timeout
        while (status := self.job_status(submission_id)) not in until:
            if time.monotonic() > deadline:
                logs = self.ray("job", "logs", submission_id, check=False).stdout
                raise AssertionError(f"job {submission_id} still {status} after {timeout:.0f}s; logs:\n{logs[-3000:]}")
            time.sleep(1)
        return status

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Alive nodes as the GCS sees them (Ray's state API through the dashboard)."""
        from ray.util.state import list_nodes

        return [n.__dict__ if hasattr(n, "__dict__") else dict(n)
                for n in list_nodes(address=self.dashboard, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)]


def _own_pids(temp_dir: str) -> list[int]:
    """PIDs of processes whose command line names ``temp_dir``: this head's raylets, workers and agents."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if temp_dir in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue
    return [p for p in pids if p != os.getpid()]


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    """Kill the head's process group (TERM, then KILL), then any of its processes that left the group."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + 10
    while (pids := _own_pids(temp_dir)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


@contextmanager
def start_head(num_cpus: float, *, gcs_port: int | None = None, autoscaling_config: Path | None = None,
               extra_env: dict[str, str] | None = None, timeout: float = 120) -> Iterator[Head]:
    """``ray start --head --block`` on 127.0.0.1 with free ports and a short temp dir; stopped on exit. A head whose
    ``ray start`` exits before it is ready (seen on a loaded CI machine: the raylet missed the GCS's 30 s deadline)
    is tried once more with fresh ports and temp dir; a fixed ``gcs_port`` is kept."""
    for attempt in (1, 2):
        head = _launch(num_cpus, gcs_port, autoscaling_config, extra_env)
        try:
            _wait_ready(head, timeout)
            break
        except HeadExited:
            _discard(head)
            if attempt == 2:
                raise
        except BaseException:
            _discard(head)
            raise
    try:
        yield head
    finally:
        _discard(head)


def _launch(num_cpus: float, gcs_port: int | None, autoscaling_config: Path | None,
            extra_env: dict[str, str] | None) -> Head:
    temp_dir = tempfile.mkdtemp(prefix="urh", dir="/tmp")
    ports = free_ports(7, avoid={gcs_port} if gcs_port else set())
    gcs_port, dash_port = gcs_port or ports.pop(), ports.pop()
    env = ray_env(temp_dir, **(extra_env or {}))
    cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
           f"--num-cpus={num_cpus:g}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash_port}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
           f"--ray-client-server-port={ports[0]}", f"--dashboard-agent-listen-port={ports[1]}",
           f"--dashboard-agent-grpc-port={ports[2]}", f"--runtime-env-agent-port={ports[3]}",
           f"--metrics-export-port={ports[4]}"]
    if autoscaling_config is not None:
        cmd.append(f"--autoscaling-config={autoscaling_config}")
    log = Path(temp_dir) / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Head(proc, temp_dir, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dash_port}", env, log)


def _discard(head: Head) -> None:
    _stop(head.proc, head.temp_dir)
    shutil.rmtree(head.temp_dir, ignore_errors=True)


class HeadExited(RuntimeError):
    """``ray start`` exited before its head was ready."""


def _wait_ready(head: Head, timeout: float) -> None:
    """Until the job API answers and the head node is alive (job submission needs both)."""
    deadline = time.monotonic() + timeout
    while True:
        if head.proc.poll() is not None:
            raise HeadExited(f"ray start exited {head.proc.returncode}: {head.log.read_text()[-3000:]}")
        try:
            head.get("/api/jobs/")
            if head.alive_nodes():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the head did not come up in {timeout:.0f}s: {head.log.read_text()[-3000:]}")
        time.sleep(1)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[Head]:
    """A 2-CPU head shared by a test module."""
    with start_head(2) as head:
        yield head


@pytest.fixture
def head_factory():
    """``with head_factory(num_cpus, gcs_port=..., autoscaling_config=..., extra_env=...) as head:`` for a test's own
    head."""
    return start_head
