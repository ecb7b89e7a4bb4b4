"""Storage calls ride out an S3 outage: a real SeaweedFS server is stopped and started again on the same ports and
data dir. Transient failures are retried for ``storage.retry_s``, then end in one StorageError; a missing object or
refused credentials are never retried; pyarrow's view (what Ray Train writes through) retries too and never drops a
failed upload silently (except inside ``pyarrow.fs.copy_files``, which drops errors raised on close: checkpoints
are uploaded by ``RunRecorder.upload_checkpoint`` instead)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs
import pytest

from tests.conftest import Weed
from unet_dist.errors import StorageError
from unet_dist.storage import resolve

KEY, SECRET = "unetdist-outage-key", "unetdist-outage-secret-0123456789"
BUCKET = "outage"

pytestmark = pytest.mark.s3


@pytest.fixture
def weed(tmp_path: Path) -> Iterator[Weed]:
    server = Weed(tmp_path / "weed", KEY, SECRET, BUCKET)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _restart_after(server: Weed, seconds: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), server.start()), daemon=True)
    thread.start()
    return thread


def test_calls_ride_out_a_short_outage(weed: Weed, tmp_path: Path) -> None:
    loc = resolve(f"s3://{BUCKET}/short", weed.storage(retry_s=60))
    (loc / "a.txt").write_text("before")
    weed.stop()
    t0 = time.monotonic()
    restart = _restart_after(weed, 2)
    assert (loc / "a.txt").read_text() == "before"
    assert time.monotonic() - t0 >= 2
    restart.join()

    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "state.pt").write_bytes(b"x" * 300_000)
    weed.stop()
    restart = _restart_after(weed, 2)
    pafs.copy_files(str(src), f"{loc.path}/ckpt", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=loc.arrow)
    restart.join()
    assert (loc / "ckpt" / "state.pt").read_bytes() == b"x" * 300_000


def test_missing_objects_and_refused_credentials_are_not_retried(weed: Weed) -> None:
    loc = resolve(f"s3://{BUCKET}/p", weed.storage(retry_s=60))
    t0 = time.monotonic()
    with pytest.raises(StorageError, match="does not exist"):
        (loc / "missing.txt").read_bytes()
    wrong = resolve(f"s3://{BUCKET}/p", weed.storage(retry_s=60).model_copy(update={"secret_access_key": "wrong-secret-000"}))
    with pytest.raises(StorageError, match="S3 rejected the secret key|S3 denied access"):
        (wrong / "x").write_text("x")
    assert time.monotonic() - t0 < 20, "a 404 or 403 was retried"


def test_outage_past_the_budget_is_one_storage_error(weed: Weed) -> None:
    loc = resolve(f"s3://{BUCKET}/long", weed.storage(retry_s=60).model_copy(update={"retry_s": 3}))
    (loc / "a.txt").write_text("x")
    weed.stop()
    t0 = time.monotonic()
    with pytest.raises(StorageError, match=r"S3 at http://127\.0\.0\.1:\d+ did not answer for \d+ s on s3://outage/long/a\.txt "
                                           r"\(\w+, \d+ attempts, storage\.retry_s=3\)"):
        (loc / "a.txt").read_text()
    t1 = time.monotonic()
    with pytest.raises(StorageError, match="did not answer"):  # how Ray Train writes its checkpoint bookkeeping
        with loc.arrow.open_output_stream(f"{loc.path}/snapshot.json") as f:
            f.write(b"{}")
    # the budget bounds the wait: botocore's own retries (5 attempts, 6-10 s on a refused connection) stay out of it
    assert t1 - t0 < 6 and time.monotonic() - t1 < 6, (t1 - t0, time.monotonic() - t1)
