"""What every Ray job entrypoint shares: refusing paths that would land in Ray's temporary copy of ``--working-dir``,
attaching to the job's cluster with SIGTERM (``ray job stop``) taken like Ctrl-C, and one-line user errors."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator, Mapping

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet_dist.config import Config  # noqa: E402
from unet_dist.errors import ConfigError, UserError  # noqa: E402


def uploaded_working_dir() -> bool:
    """Whether this process is a Ray job's entrypoint running in its uploaded copy of ``--working-dir``."""
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    return bool((job_config.get("runtime_env") or {}).get("working_dir"))


def check_job_paths(paths: Mapping[str, str | None]) -> None:
    """Refuse relative local paths in a job with ``--working-dir``: they would resolve inside Ray's temporary copy of
    the working dir, so results vanish with it and data is missing from it (.rayignore keeps datasets out)."""
    if not uploaded_working_dir():
        return
    for key, value in paths.items():
        if value and "://" not in value and not Path(value).expanduser().is_absolute():
            raise ConfigError(f"{key}: {value!r} is a relative path, which a job run with --working-dir resolves in "
                              "Ray's temporary copy of the working dir; use s3://BUCKET/PREFIX or an absolute path "
                              "that every node shares")


def run_paths(cfg: Config) -> dict[str, str | None]:
    return {"data.dataset": cfg.data.dataset, "storage.uri": cfg.storage.uri}


@contextlib.contextmanager
def attached(cfg: Config) -> Iterator[None]:
    """Attach to the job's cluster for the whole job and take SIGTERM (``ray job stop``; SIGKILL follows after
    RAY_JOB_STOP_WAIT_TIME_S, 3 s) like Ctrl-C, so the run or campaign record ends ``stopped``, not ``running``.
    The handler goes in after ``ray.init``, whose own SIGTERM handler exits without closing any record."""
    from unet_dist.session import ray_session

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with ray_session(cfg):
        signal.signal(signal.SIGTERM, interrupt)
        yield


def run_job(body: Callable[[], str]) -> int:
    """Run ``body`` and print the JSON line it returns; a user error prints one line and exits with its code."""
    try:
        line = body()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(line, flush=True)
    return 0
