"""Processes the suite starts, and the ports it gives them: nothing outlives the session, nothing collides.

The pytest process becomes a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so whatever a test starts stays its
descendant even when the process in between exits (``ray start`` daemons, Ray's agents after their raylet died).
:func:`end_session_processes` ends every descendant at session end, after a failure or Ctrl-C too, without touching
any process the suite did not start (never ``ray stop``). Everything started also carries :data:`MARK_ENV`.
Ray renames its Python processes, which blanks their ``/proc/PID/environ``, so :func:`kill_marked` takes the marked
processes *with their descendants* before it signals any of them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import time
import uuid
from pathlib import Path

MARK_ENV = "UNET_DIST_TEST_SESSION"
GRPC_OFFSET = 10000  # weed serves each listener's gRPC on port + 10000


def session_mark() -> str:
    """This session's mark, set in ``os.environ`` so every child inherits it (xdist workers share the parent's)."""
    return os.environ.setdefault(MARK_ENV, uuid.uuid4().hex)


def become_subreaper() -> None:
    """Orphans of what this process starts are re-parented here instead of to init (no-op off Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _processes() -> dict[int, tuple[int, bytes]]:
    """``{pid: (ppid, environ)}`` of every live process but this one."""
    out = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(proc.name)
            stat = (proc / "stat").read_text()
            if pid == os.getpid() or stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            out[pid] = (int(stat.rsplit(")", 1)[1].split()[1]), (proc / "environ").read_bytes())
        except (OSError, ValueError, IndexError):
            continue
    return out


def _with_descendants(roots: set[int], procs: dict[int, tuple[int, bytes]]) -> set[int]:
    found, grew = set(roots), True
    while grew:
        new = {pid for pid, (ppid, _) in procs.items() if ppid in found and pid not in found}
        found |= new
        grew = bool(new)
    return found


def marked_pids(name: str, value: str) -> list[int]:
    """Live processes (other than this one) whose environment holds ``name=value``, with their descendants."""
    needle = f"{name}={value}".encode()
    procs = _processes()
    return sorted(_with_descendants({pid for pid, (_, env) in procs.items() if needle in env.split(b"\0")}, procs))


def descendant_pids() -> list[int]:
    """Live descendants of this process (orphans included, once it is a subreaper)."""
    return sorted(_with_descendants({os.getpid()}, _processes()) - {os.getpid()})


def _kill(find, grace: float) -> None:
    """SIGTERM what ``find()`` returns, SIGKILL what is left after ``grace`` seconds; a pid set taken before any
    signal, so children re-parented by a parent's death are still in it."""
    pids = set(find())
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pids)
            pids = {pid for pid in pids if _alive(pid)} | set(find())
            if not pids:
                return
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _reap(pids: set[int] | None = None) -> None:
    """Collect exited children among ``pids`` (None: all) that nobody waits for: orphans re-parented here."""
    for pid in pids or ():
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    while pids is None:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_marked(name: str, value: str, grace: float = 5.0) -> None:
    """End every process marked ``name=value`` and its descendants: SIGTERM, then SIGKILL after ``grace`` s."""
    _kill(lambda: marked_pids(name, value), grace)


def end_session_processes() -> None:
    """End every process this session started and did not stop, then reap them."""
    _kill(descendant_pids, grace=5.0)
    _reap()


def free_ports(n: int, avoid: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1, none in ``avoid``. All are held open until all are chosen: ports
    taken one at a time can repeat (the kernel hands a just-released port out again), and a Ray head refuses two
    components on one port."""
    held = [socket.socket() for _ in range(n + len(avoid))]  # open at once: distinct ports, n of them not avoided
    try:
        for s in held:
            s.bind(("127.0.0.1", 0))
        return sorted({s.getsockname()[1] for s in held} - set(avoid))[:n]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    """One free port on 127.0.0.1 (for services without weed's gRPC rule)."""
    return free_ports(1)[0]


def weed_ports(n: int) -> list[int]:
    """``n`` free ports for SeaweedFS whose gRPC twins (port + 10000) are valid and free, and where no chosen port
    or twin equals another chosen port or twin: weed refuses a port that is another listener's gRPC port."""
    chosen: list[int] = []
    taken: set[int] = set()
    while len(chosen) < n:
        port = free_port()
        twin = port + GRPC_OFFSET
        if twin > 65535 or port in taken or twin in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", twin))
            except OSError:
                continue
        chosen.append(port)
        taken.update((port, twin))
    return chosen
