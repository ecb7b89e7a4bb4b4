"""The Ray connection shared by train, tune and ``predict --ray``: connect, environment defaults, logging, GPU choice.

:func:`ray_session` attaches to ``resources.address`` / ``RAY_ADDRESS`` (``ray job submit`` sets it) or else starts
a private local Ray, even when another Ray runs on the machine: a run never lands on a cluster nobody named. It keeps
Ray's own chatter in Ray's log files and shuts down only what it started. :func:`decide_gpu` resolves
``resources.use_gpu=auto`` from what the cluster has *and* what its autoscaler can launch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

from unet_dist.config import Config
from unet_dist.errors import UserError
from unet_dist.storage import credential_env, credentials_in_env

RAY_ENV_DEFAULTS = {
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "1",
}
"""Environment every process we start Ray from gets (unless the user set them)."""

QUIET_LOGGERS = ("ray", "ray.train", "ray.tune")  # ray.data: its console handler, below


def apply_env_defaults(address: str | None = None) -> None:
    """Ray environment defaults; a local Ray (no address) also runs without auth tokens (see the field notes)."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not address:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def quiet_ray_logs(verbose: bool = False) -> None:
    """Keep Ray's INFO chatter (per-report dumps, execution plans, deprecations) out of the user's terminal.

    Ray still writes everything to its session log files; ``verbose`` leaves Ray's loggers as they are.
    """
    if verbose:
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if name == "ray" else logging.WARNING)
    with contextlib.suppress(ImportError):
        from ray.util.annotations import RayDeprecationWarning

        warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    with contextlib.suppress(ImportError):
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        data_logger = logging.getLogger("ray.data")
        data_logger.setLevel(logging.DEBUG)  # Ray Data's own file handler keeps everything
        for handler in data_logger.handlers:
            # Ray's own console handler only: a handler the application put on the root logger may be listed here
            # too (seen in tests: pytest's capture handlers), and silencing it would hide every warning of ours
            if type(handler).__module__.startswith("ray.") and type(handler).__name__ != "SessionFileHandler":
                handler.setLevel(logging.ERROR)


LOCAL = "local"
"""Ray's address for "start a new local Ray": what unet-dist uses when no cluster is named."""

CONNECT_TIMEOUT_S = 5.0


def resolve_address(cfg: Config) -> str:
    """The Ray to use: ``resources.address``, else ``RAY_ADDRESS``, else :data:`LOCAL` (a private local Ray).

    Ray's own default (``address=None``) attaches to whatever cluster was last started on the machine; unet-dist
    does that only when asked, with ``--address auto``."""
    return cfg.resources.address or os.environ.get("RAY_ADDRESS") or LOCAL


def running_local_cluster() -> str | None:
    """The GCS address of a Ray started on this machine with ``ray start`` (Ray's address file), if it answers."""
    from ray._common.utils import get_ray_address_file

    try:
        address = open(get_ray_address_file(None)).read().strip()
    except OSError:
        return None
    return address if address and _reachable(address) is None else None


def _reachable(address: str) -> str | None:
    """None when a TCP connection to ``address``'s host:port opens within :data:`CONNECT_TIMEOUT_S`, else why not."""
    host_port = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        return None  # not host:port (Ray resolves it, and says what is wrong)
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def check_address(address: str) -> str:
    """``address`` as Ray will connect to it (``auto`` resolved), after a quick TCP check: a dead or unreachable
    cluster is a one-line UserError in seconds, not a worker-group timeout minutes later."""
    if address == LOCAL:
        return address
    where = "resources.address / --address / RAY_ADDRESS"
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address_or_die

        try:
            address = canonicalize_bootstrap_address_or_die("auto")
        except ConnectionError as err:
            raise UserError(f"--address auto: {err}") from None
    why = _reachable(address)
    if why is not None:
        raise UserError(f"cannot reach the Ray cluster at {address} ({where}): {why}; start it, or leave the address "
                        "unset to run on a local Ray of this command's own")
    return address


def with_credentials(runtime_env: dict[str, Any] | None, cfg: Config) -> dict[str, Any] | None:
    """``runtime_env`` plus the S3 credentials as env_vars (config first, else this environment): how every process
    of the job (Tune trials, Train controllers and workers, Data tasks) gets them. Ray keeps a job's runtime_env in
    its session only; a key the submitted job's own runtime_env sets is left to it (Ray refuses the same key twice)."""
    submitted = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    env = {k: v for k, v in credential_env(cfg.storage).items() if k not in (submitted.get("env_vars") or {})}
    if not env:
        return runtime_env
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
    return runtime_env


def init_local(**init_kwargs: Any) -> None:
    """``ray.init(address="local", ...)``: a private local Ray whose every process knows its address.

    Ray's helpers inside a job (Ray Train's placement-group cleaner, the state API) look up "the" Ray of the
    machine when ``RAY_ADDRESS`` is unset: with a ``ray start`` head on the machine they query that one (and may
    remove a live run's placement group, its controller being unknown there), with a second local Ray they fail.
    So the GCS port is chosen here (``RAY_GCS_SERVER_PORT`` while Ray starts) and the job's env_vars carry
    ``RAY_ADDRESS``. A port taken in between is retried once on another."""
    import ray
    from ray._private.services import get_node_ip_address

    runtime_env = dict(init_kwargs.pop("runtime_env", None) or {})
    for attempt in range(2):
        port = _free_port()
        env_vars = {**(runtime_env.get("env_vars") or {}), "RAY_ADDRESS": f"{get_node_ip_address()}:{port}"}
        saved = os.environ.get("RAY_GCS_SERVER_PORT")
        os.environ["RAY_GCS_SERVER_PORT"] = str(port)
        try:
            ray.init(address=LOCAL, runtime_env={**runtime_env, "env_vars": env_vars}, **init_kwargs)
            return
        except Exception:
            if attempt or ray.is_initialized():
                raise
        finally:
            if saved is None:
                os.environ.pop("RAY_GCS_SERVER_PORT", None)
            else:
                os.environ["RAY_GCS_SERVER_PORT"] = saved


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_session(cfg: Config, *, verbose: bool = False, **init_kwargs: Any) -> Iterator[bool]:
    """Attach to the named cluster or start a private local Ray for the block; yields True if this call started Ray.

    Workers' output stays in Ray's session log files unless ``verbose`` (the live view shows progress,
    worker errors surface as one-line exceptions), so a terminal, ``--json`` and ``ray job logs`` show the
    run's own output, not Ray's chatter.
    """
    import ray

    if ray.is_initialized():
        quiet_ray_logs(verbose)
        with credentials_in_env(cfg.storage):
            yield False
        return
    address = check_address(resolve_address(cfg))
    apply_env_defaults(None if address == LOCAL else address)
    if address == LOCAL and (other := running_local_cluster()):
        print(f"note: a Ray cluster runs on this machine ({other}); this command starts a local Ray of its own "
              "(--address auto runs on that one)", file=sys.stderr)
    init_kwargs["runtime_env"] = with_credentials(init_kwargs.get("runtime_env"), cfg)
    init_kwargs.update(configure_logging=True, logging_level=logging.INFO if verbose else logging.WARNING,
                       log_to_driver=verbose)
    try:
        if address == LOCAL:
            init_local(**init_kwargs)
        else:
            ray.init(address=address, **init_kwargs)
    except ConnectionError as err:
        raise UserError(f"cannot connect to the Ray cluster at {address!r} (resources.address / RAY_ADDRESS): {err}") from None
    quiet_ray_logs(verbose)
    try:
        with credentials_in_env(cfg.storage):
            yield True
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class GpuDecision:
    """Whether a run uses GPUs, and why (printed at start)."""

    use_gpu: bool
    reason: str


def decide_gpu(cfg: Config) -> GpuDecision:
    """``resources.use_gpu`` resolved against the connected cluster: ``auto`` picks GPUs when a node has them
    now or when the autoscaler can launch a node type that has them."""
    setting = cfg.resources.use_gpu
    if setting != "auto":
        return GpuDecision(bool(setting), f"resources.use_gpu={str(setting).lower()}")
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus > 0:
        return GpuDecision(True, f"use_gpu=auto: the cluster has {gpus:g} GPU(s)")
    launchable = launchable_gpu_node_types()
    if launchable:
        names = ", ".join(f"{name} ({n:g} GPU)" for name, n in launchable.items())
        return GpuDecision(True, f"use_gpu=auto: no GPU node is up, but the autoscaler can launch {names}")
    return GpuDecision(False, "use_gpu=auto: no GPU in the cluster and no GPU node type the autoscaler can launch; training on CPU")


def launchable_gpu_node_types() -> dict[str, float]:
    """``{node type: GPUs per node}`` of autoscaler node types that have GPUs and may launch nodes.

    Read from the cluster config the autoscaler publishes to the GCS when it names GPU groups, else from
    :data:`GPU_GROUPS_ENV` (the driver's environment, then the head's: KubeRay's groups live in the RayCluster
    resource, and ``deploy/`` publishes them there), else from the autoscaling config on the head node (the
    launcher's ``~/ray_bootstrap_config.yaml``, or the ``--autoscaling-config`` a head was started with), read by a
    zero-CPU task on the head. Empty when the cluster has no autoscaler.
    """
    import ray

    published = _published_node_types()
    if published:
        return published
    if os.environ.get(GPU_GROUPS_ENV):
        return parse_gpu_groups(os.environ[GPU_GROUPS_ENV])
    read = ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})(head_gpu_node_types)
    try:
        return ray.get(read.remote(), timeout=30)
    except Exception:  # no head resource (Ray client, old clusters): treat as no autoscaler
        return {}


GPU_GROUPS_ENV = "UNET_DIST_GPU_NODE_GROUPS"
"""``GROUP=GPUS[,GROUP=GPUS...]``: the GPU worker groups a cluster can scale to, for clusters whose node groups live
outside Ray (KubeRay keeps them in the RayCluster resource). ``deploy/`` sets it on the head from its worker groups."""


def parse_gpu_groups(text: str) -> dict[str, float]:
    """``{group: GPUs per node}`` from a :data:`GPU_GROUPS_ENV` value; a malformed entry is a one-line UserError."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, gpus = item.partition("=")
        try:
            value = float(gpus)
        except ValueError:
            value = -1.0
        if not sep or not name.strip() or value < 0:
            raise UserError(f"{GPU_GROUPS_ENV}={text!r}: expected GROUP=GPUS[,GROUP=GPUS], e.g. gpu=1,gpu8=8")
        if value > 0:
            out[name.strip()] = value
    return out


def head_gpu_node_types() -> dict[str, float]:
    """Runs as a Ray task on the head: the GPU groups its environment names (:data:`GPU_GROUPS_ENV`), else the GPU
    node types of its autoscaling config."""
    if os.environ.get(GPU_GROUPS_ENV):
        return parse_gpu_groups(os.environ[GPU_GROUPS_ENV])
    return gpu_node_types(head_autoscaling_config() or {})


def gpu_node_types(config: dict[str, Any]) -> dict[str, float]:
    """GPU node types with ``max_workers`` > 0 in a cluster-launcher config."""
    out: dict[str, float] = {}
    for name, node_type in (config.get("available_node_types") or {}).items():
        gpus = float((node_type.get("resources") or {}).get("GPU", 0))
        if gpus > 0 and int(node_type.get("max_workers", config.get("max_workers", 0)) or 0) > 0:
            out[name] = gpus
    return out


def _published_node_types() -> dict[str, float] | None:
    try:
        from ray._private.state import state

        cluster_config = state.get_cluster_config()
    except Exception:
        return None
    if not cluster_config:
        return None
    return {g.name: float(g.resources["GPU"]) for g in cluster_config.node_group_configs
            if g.resources.get("GPU", 0) > 0 and g.max_count != 0}


def head_autoscaling_config() -> dict[str, Any] | None:
    """The autoscaling config on this (head) node, or None: runs as a Ray task on the head."""
    from pathlib import Path

    import yaml

    paths = [Path("~/ray_bootstrap_config.yaml").expanduser()]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(part.endswith("monitor.py") for part in cmd):
            paths += [Path(a.split("=", 1)[1]) for a in cmd if a.startswith("--autoscaling-config=")]
    for path in paths:
        if path.is_file():
            return yaml.safe_load(path.read_text())
    return None
