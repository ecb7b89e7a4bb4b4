"""URI -> filesystem: the one door to local and S3 storage.

``resolve("s3://bucket/prefix")`` or ``resolve("/data/x")`` returns a :class:`Location` holding a
pyarrow filesystem (for Parquet and Ray) and an fsspec filesystem (for everything else) on the same
path. Endpoint, region and credentials come from :class:`~unet_dist.config.StorageConfig` or the
standard ``AWS_*`` environment variables, never from the URI, and are never part of a ``Location``'s
string form.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import logging
import os
import posixpath
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs
from pyarrow import PythonFile

from unet_dist.config import Config, StorageConfig
from unet_dist.errors import StorageError

_S3_ERRORS = {
    "NoSuchBucket": "bucket {bucket!r} does not exist: create it (e.g. `aws s3 mb s3://{bucket}`) or fix the URI",
    "InvalidAccessKeyId": "S3 rejected the access key for {uri}: check AWS_ACCESS_KEY_ID / storage.access_key_id",
    "SignatureDoesNotMatch": "S3 rejected the secret key for {uri}: check AWS_SECRET_ACCESS_KEY / storage.secret_access_key",
    "AccessDenied": "S3 denied access to {uri}: check the credentials and the bucket policy",
    "403": "S3 denied access to {uri}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket policy",
    "404": "bucket {bucket!r} does not exist: create it or fix the URI",
}
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling",
                    "ThrottlingException", "RequestLimitExceeded", "500", "502", "503", "504"}
_MAX_BACKOFF_S = 10.0
_answered: set[str] = set()
"""Endpoints that answered in this process: only these get connection errors retried (a wrong endpoint fails at once)."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Location:
    """A resolved storage location: ``uri`` is safe to print and store; ``path`` is what the filesystems take."""

    uri: str
    path: str
    fs: Any = field(repr=False, compare=False)
    storage: StorageConfig | None = field(default=None, repr=False, compare=False)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (by Ray, into Tune's state) as its URI and credential-free settings: unpickled, it is resolved again
        and takes the keys from that process's environment (:func:`credential_env` puts them there)."""
        return resolve, (self.uri, public_storage(self.storage))

    def __copy__(self) -> "Location":
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> "Location":
        return self

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    @property
    def arrow(self) -> pafs.FileSystem:
        """A pyarrow view of the same filesystem (Parquet datasets, Ray storage_filesystem), retrying like :func:`_call`."""
        if self.is_s3:
            return pafs.PyFileSystem(RetryingHandler(self))
        return pafs.LocalFileSystem()

    def join(self, *parts: str) -> "Location":
        rel = posixpath.join(*parts) if parts else ""
        return Location(_join_uri(self.uri, rel), posixpath.join(self.path, rel) if rel else self.path, self.fs, self.storage)

    def __truediv__(self, part: str) -> "Location":
        return self.join(part)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> "Location":
        path = posixpath.dirname(self.path.rstrip("/"))
        uri = self.uri.rstrip("/").rsplit("/", 1)[0]
        return Location(uri, path, self.fs, self.storage)

    def exists(self) -> bool:
        return _call(self, self.fs.exists, self.path)

    def isdir(self) -> bool:
        return _call(self, self.fs.isdir, self.path)

    def size(self) -> int:
        return _call(self, self.fs.size, self.path)

    def read_bytes(self) -> bytes:
        if not self.exists():
            raise StorageError(f"{self.uri} does not exist")
        return _call(self, self.fs.cat_file, self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Write a whole object; local files are replaced atomically so readers never see half a file."""
        if self.is_s3:
            _call(self, self.fs.pipe_file, self.path, data)
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def mkdir(self) -> None:
        if not self.is_s3:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def ls(self) -> list["Location"]:
        """Direct children, sorted by name; empty if the location does not exist."""
        if not self.exists():
            return []
        entries = _call(self, self.fs.ls, self.path, detail=False, **({"refresh": True} if self.is_s3 else {}))
        names = sorted({posixpath.basename(str(e).rstrip("/")) for e in entries})
        return [self.join(n) for n in names if n]

    def rm(self, recursive: bool = True) -> None:
        if self.exists():
            _call(self, self.fs.rm, self.path, recursive=recursive)

    def move(self, dest: "Location") -> None:
        _call(self, self.fs.mv, self.path, dest.path, recursive=True)

    @contextlib.contextmanager
    def open(self, mode: str = "rb") -> Iterator[Any]:
        if "w" in mode and not self.is_s3:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with _call(self, self.fs.open, self.path, mode) as f:
            yield f


def _join_uri(uri: str, rel: str) -> str:
    if not rel:
        return uri
    return uri.rstrip("/") + "/" + rel.lstrip("/")


S3_CONNECTIONS = 64
"""Concurrent connections per S3 client (botocore's default is 10): many small GETs (the collector) are latency-bound."""

S3_ATTEMPTS = 2
"""Attempts botocore makes per request: its default (5, with backoff) spends 6-10 s on one refused connection, so
``storage.retry_s=3`` waited 13 s. :func:`retrying` owns the outage policy (s3fs still retries a connection dropped
inside a read of an open file, which :func:`retrying` does not wrap)."""

_ENV_FALLBACK: dict[str, tuple[str, ...]] = {
    "access_key_id": ("AWS_ACCESS_KEY_ID",),
    "secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region": ("AWS_DEFAULT_REGION", "AWS_REGION"),
}
_SECRET_FIELDS = ("access_key_id", "secret_access_key")


def _setting(storage: StorageConfig, name: str) -> str | None:
    """One S3 setting: the config's value, else the first of its AWS environment variables that is set."""
    value = getattr(storage, name)
    if value is not None:
        return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return next((os.environ[env] for env in _ENV_FALLBACK[name] if os.environ.get(env)), None)


def s3_options(storage: StorageConfig | None = None) -> dict[str, Any]:
    """s3fs keyword arguments from the config, falling back to the standard AWS environment."""
    storage = storage or StorageConfig()
    opts: dict[str, Any] = {}
    key, secret = _setting(storage, "access_key_id"), _setting(storage, "secret_access_key")
    if key and secret:
        opts.update(key=key, secret=secret)
    endpoint = _setting(storage, "endpoint_url")
    if endpoint:
        opts["endpoint_url"] = endpoint
    region = _setting(storage, "region")
    opts["config_kwargs"] = {"max_pool_connections": S3_CONNECTIONS, "retries": {"total_max_attempts": S3_ATTEMPTS},
                             **({"region_name": region} if region else {})}
    opts["skip_instance_cache"] = True
    return opts


def with_env_settings(storage: StorageConfig) -> StorageConfig:
    """``storage`` with its unset endpoint and region taken from this process's AWS environment, for processes that
    do not share it (Ray workers on other nodes). Never credentials: see :func:`public_config`."""
    update = {n: v for n in ("endpoint_url", "region") if getattr(storage, n) is None and (v := _setting(storage, n))}
    return storage.model_copy(update=update)


def public_storage(storage: StorageConfig | None) -> StorageConfig | None:
    """``storage`` without credentials."""
    if storage is None or all(getattr(storage, n) is None for n in _SECRET_FIELDS):
        return storage
    return storage.model_copy(update=dict.fromkeys(_SECRET_FIELDS))


def public_config(cfg: Config) -> Config:
    """``cfg`` without credentials, endpoint and region filled in (:func:`with_env_settings`): the config that Tune,
    Ray Train, schedulers and records get. Ray's processes read the keys from their environment (:func:`credential_env`)."""
    return cfg.model_copy(update={"storage": with_env_settings(public_storage(cfg.storage))})


def credential_env(storage: StorageConfig | None) -> dict[str, str]:
    """The S3 credentials (config first, else this process's environment) as AWS environment variables: what the
    Ray processes of a job get in its runtime_env, which Ray keeps in its session only."""
    storage = storage or StorageConfig()
    key, secret = _setting(storage, "access_key_id"), _setting(storage, "secret_access_key")
    if not (key and secret):
        return {}
    env = {"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
    if storage.access_key_id is None and os.environ.get("AWS_SESSION_TOKEN"):
        env["AWS_SESSION_TOKEN"] = os.environ["AWS_SESSION_TOKEN"]
    return env


@contextlib.contextmanager
def credentials_in_env(storage: StorageConfig | None) -> Iterator[None]:
    """This process's environment holds the config's S3 keys for the block (restored after): the driver's own
    credential-free copies (Tune's scheduler, unpickled state) resolve with them, and Tune hands them to its trials."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    env = credential_env(storage)
    if env and "AWS_SESSION_TOKEN" not in env:  # the config's keys: an environment session token belongs to others
        os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def resolve(uri: str | os.PathLike[str] | Location, storage: StorageConfig | None = None) -> Location:
    """Turn ``/path``, ``file://...`` or ``s3://bucket/prefix`` into a :class:`Location`."""
    if isinstance(uri, Location):
        return uri
    text = os.fspath(uri)
    parsed = urlparse(text)
    if parsed.scheme in ("s3", "s3a"):
        if parsed.username or parsed.password or "@" in parsed.netloc:
            raise StorageError("credentials are not accepted inside an S3 URI; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY instead")
        if not parsed.netloc:
            raise StorageError(f"{text!r} has no bucket; use s3://BUCKET/PREFIX")
        path = (parsed.netloc + "/" + parsed.path.strip("/")).rstrip("/")
        fs = fsspec.filesystem("s3", **s3_options(storage))
        return Location(f"s3://{path}", path, fs, storage)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        local = parsed.path if parsed.scheme == "file" else text
        path = str(Path(local).expanduser().resolve())
        return Location(path, path, fsspec.filesystem("file"), storage)
    raise StorageError(f"unsupported storage URI {text!r}: use a local path, file://PATH or s3://BUCKET/PREFIX")


def _call(loc: Location, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a filesystem call through S3 outages (:func:`retrying`), turning permission/bucket/connection failures
    into a clear StorageError."""
    try:
        return retrying(loc, fn, *args, **kwargs)
    except StorageError:
        raise
    except FileNotFoundError as err:
        if loc.is_s3 and (_s3_code(err) == "NoSuchBucket" or _bucket_missing(loc)):
            raise StorageError(_S3_ERRORS["NoSuchBucket"].format(bucket=loc.path.split("/")[0], uri=loc.uri)) from None
        raise StorageError(f"{loc.uri}: not found ({err.args[0] if err.args else err})") from None
    except Exception as err:  # botocore / aiohttp errors carry no common base worth importing
        raise _translate(loc, err) from None


def retrying(loc: Location, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, retried with exponential backoff while S3 fails transiently (connection lost, timeout,
    5xx, SlowDown) for up to ``storage.retry_s`` seconds; then a StorageError. Other errors pass through at once."""
    if not loc.is_s3:
        return fn(*args, **kwargs)
    endpoint = str(s3_options(loc.storage).get("endpoint_url", "the default AWS endpoint"))
    budget = (loc.storage or StorageConfig()).retry_s
    start, delay, retries = time.monotonic(), 0.5, 0
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as err:
            waited = time.monotonic() - start
            if not _transient(err, endpoint in _answered):
                raise
            if waited >= budget:
                raise StorageError(f"S3 at {endpoint} did not answer for {waited:.0f} s on {loc.uri} ({type(err).__name__}, "
                                   f"{retries + 1} attempts, storage.retry_s={budget:g}): check the storage service and "
                                   "network, or raise storage.retry_s") from None
            if retries == 0:
                log.warning("S3 at %s failed (%s) on %s; retrying for up to %g s (storage.retry_s)",
                            endpoint, type(err).__name__, loc.uri, budget)
            retries += 1
            time.sleep(min(delay, budget - waited))
            delay = min(2 * delay, _MAX_BACKOFF_S)
            continue
        _answered.add(endpoint)
        if retries:
            log.warning("S3 at %s answered again after %.1f s (%d retries) on %s", endpoint,
                        time.monotonic() - start, retries, loc.uri)
        return result


def _transient(err: BaseException, answered: bool) -> bool:
    """Whether a retry may succeed: an S3 throttle/5xx code, or (for an endpoint that answered before) a lost
    connection or timeout. Never a missing object/bucket, a refusal or a credential error."""
    if isinstance(err, (FileNotFoundError, PermissionError, StorageError)):
        return False
    code = _s3_code(err)
    if code is not None:
        return code in _TRANSIENT_CODES
    network = (*_types("botocore.exceptions", "ConnectionError", "HTTPClientError"),
               *_types("aiohttp", "ClientConnectionError", "ClientPayloadError"),
               *_types("fsspec.exceptions", "FSTimeoutError"), ConnectionError, TimeoutError)
    return answered and _is(err, network) and not _is(err, _types("botocore.exceptions", "NoCredentialsError"))


class RetryingHandler(pafs.FSSpecHandler):
    """pyarrow's view of an S3 :class:`Location` (what Ray Train and Parquet use) whose calls ride out outages like
    :func:`_call`; written files reach S3 whole on close (staged locally, then uploaded with retries)."""

    def __init__(self, loc: Location) -> None:
        super().__init__(loc.fs)
        self.loc = loc

    def __reduce__(self) -> tuple[Any, ...]:
        return RetryingHandler, (self.loc,)

    def _retry(self, name: str, *args: Any) -> Any:
        return retrying(self.loc, getattr(super(), name), *args)

    def get_file_info(self, paths: Any) -> Any:
        return self._retry("get_file_info", paths)

    def get_file_info_selector(self, selector: Any) -> Any:
        return self._retry("get_file_info_selector", selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._retry("create_dir", path, recursive)

    def delete_dir(self, path: str) -> None:
        self._retry("delete_dir", path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._retry("delete_dir_contents", path, missing_dir_ok)

    def delete_file(self, path: str) -> None:
        self._retry("delete_file", path)

    def move(self, src: str, dest: str) -> None:
        self._retry("move", src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._retry("copy_file", src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self._retry("open_input_stream", path)

    def open_input_file(self, path: str) -> Any:
        return self._retry("open_input_file", path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return PythonFile(_UploadOnClose(self.loc, path), mode="w")


class _UploadOnClose(io.FileIO):
    """A local temp file that becomes the object ``path`` on close, uploaded with retries: S3 gets the whole file or
    nothing, and a failed upload raises (pyarrow's streamed S3 writes can fail silently, e.g. in ``copy_files``)."""

    def __init__(self, loc: Location, path: str) -> None:
        fd, self._tmp = tempfile.mkstemp(prefix="unet-dist-upload-")
        super().__init__(fd, "wb")
        self._loc, self._path = loc, path

    def close(self) -> None:
        if self.closed:
            return
        super().close()
        try:
            retrying(self._loc, self._loc.fs.put_file, self._tmp, self._path)
        finally:
            os.unlink(self._tmp)


def _bucket_missing(loc: Location) -> bool:
    try:
        return not loc.fs.exists(loc.path.split("/")[0])
    except Exception:
        return False


def _types(module: str, *names: str) -> tuple[type, ...]:
    """The named exception classes of an optional dependency (none if it is not installed)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return ()
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n))


def _chain(err: BaseException) -> Iterable[BaseException]:
    """``err`` and every exception behind it (``__cause__``/``__context__``), each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _s3_code(err: BaseException) -> str | None:
    """The S3 error code of the first botocore ``ClientError`` behind ``err`` ("403"/"404" for a HEAD request)."""
    client_errors = _types("botocore.exceptions", "ClientError")
    for e in _chain(err):
        if client_errors and isinstance(e, client_errors):
            error = e.response.get("Error", {})  # type: ignore[attr-defined]
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")  # type: ignore[attr-defined]
            return str(error.get("Code") or status or "") or None
    return None


def _is(err: BaseException, types: tuple[type, ...]) -> bool:
    return bool(types) and any(isinstance(e, types) for e in _chain(err))


def _translate(loc: Location, err: Exception) -> Exception:
    """A StorageError for S3 failures recognised by exception type and S3 error code (never message text); else ``err``."""
    bucket = loc.path.split("/")[0]
    code = _s3_code(err)
    if code in _S3_ERRORS:
        return StorageError(_S3_ERRORS[code].format(bucket=bucket, uri=loc.uri))
    if _is(err, _types("botocore.exceptions", "NoCredentialsError")):
        return StorageError(f"no S3 credentials for {loc.uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    unreachable = (*_types("botocore.exceptions", "ConnectionError"), *_types("aiohttp", "ClientConnectorError"), ConnectionError)
    if _is(err, unreachable):
        endpoint = s3_options(loc.storage).get("endpoint_url", "the default AWS endpoint")
        return StorageError(f"cannot reach S3 at {endpoint} for {loc.uri}: check AWS_ENDPOINT_URL / storage.endpoint_url and the network")
    if _is(err, (PermissionError,)):
        return StorageError(_S3_ERRORS["403"].format(uri=loc.uri))
    return err


def check_writable(loc: Location) -> None:
    """Fail early and clearly when a destination cannot be written (missing bucket, wrong credentials)."""
    if loc.is_s3:
        bucket = loc.path.split("/")[0]
        try:
            loc.fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:
            raise StorageError(_S3_ERRORS["NoSuchBucket"].format(bucket=bucket, uri=loc.uri)) from None
        except Exception as err:
            raise _translate(loc, err) from None
    probe = loc.join(f".unet-dist-probe-{uuid.uuid4().hex[:8]}")
    probe.write_bytes(b"ok")
    probe.rm(recursive=False)


@dataclass
class Removal:
    """What :func:`remove_tree` really did: files removed, files only hidden behind a delete marker (a versioned
    bucket keeps their bytes) and files refused (``"key: Code (message)"``)."""

    removed: int = 0
    hidden: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def freed(self) -> bool:
        return not self.hidden and not self.errors


def remove_tree(loc: Location, purge_versions: bool = False) -> Removal:
    """Delete every file under ``loc``, checking each one: on S3 the bulk delete's per-key ``Errors`` and
    ``DeleteMarker`` answers are read (s3fs's ``rm`` ignores them); ``purge_versions`` deletes every version of
    each key (a versioned bucket then frees the bytes)."""
    if not loc.is_s3:
        return _remove_local(loc.path)
    bucket, _, prefix = loc.path.partition("/")
    keys = _s3_keys(loc, bucket, prefix.rstrip("/") + "/", purge_versions)
    out = Removal()
    for start in range(0, len(keys), 1000):
        resp = _call(loc, loc.fs.call_s3, "delete_objects", Bucket=bucket,
                     Delete={"Objects": keys[start:start + 1000], "Quiet": False})
        for done in resp.get("Deleted", []):
            if done.get("DeleteMarker") and not done.get("VersionId"):
                out.hidden += 1
            else:
                out.removed += 1
        out.errors += [f"{e.get('Key')}: {e.get('Code')} ({e.get('Message')})" for e in resp.get("Errors", [])]
    loc.fs.invalidate_cache(loc.path)
    return out


def list_pages(loc: Location) -> Iterator[list[dict[str, Any]]]:
    """Every object under an S3 location, a page (``list_objects_v2``: up to 1000) at a time, each request riding
    out outages like every storage call. Each object is S3's dict (``Key``, ``Size``, ``ETag``, ``LastModified``)
    plus ``rel``, its key relative to ``loc``."""
    bucket, _, prefix = loc.path.partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = _call(loc, loc.fs.call_s3, "list_objects_v2", **kwargs)
        yield [{**obj, "rel": obj["Key"][len(prefix):]} for obj in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def read_many(root: Location, paths: list[str]) -> dict[str, bytes | Exception]:
    """The bytes of each path relative to ``root``, or the error for a file gone or refused (storage that fails as
    a whole raises StorageError): one GET per file on S3, :data:`S3_CONNECTIONS` at a time."""
    if not paths:
        return {}
    if root.is_s3:
        from fsspec.asyn import sync

        return _call(root, sync, root.fs.loop, _get_all, root, paths)
    out: dict[str, bytes | Exception] = {}
    for rel in paths:
        try:
            with open(os.path.join(root.path, rel), "rb") as f:
                out[rel] = f.read()
        except OSError as err:
            out[rel] = err
    return out


async def _get_all(root: Location, paths: list[str]) -> dict[str, bytes | Exception]:
    fs = root.fs
    await fs.set_session()
    limit = asyncio.Semaphore(S3_CONNECTIONS)
    bucket, _, prefix = root.path.partition("/")

    async def one(rel: str) -> tuple[str, bytes | Exception]:
        key = f"{prefix}/{rel}" if prefix else rel
        async with limit:
            try:
                resp = await fs._call_s3("get_object", Bucket=bucket, Key=key)
                try:
                    return rel, await resp["Body"].read()
                finally:
                    resp["Body"].close()
            except (FileNotFoundError, PermissionError) as err:  # one object gone or refused; storage failures raise
                return rel, err

    return dict(await asyncio.gather(*(one(p) for p in paths)))


def _s3_keys(loc: Location, bucket: str, prefix: str, versions: bool) -> list[dict[str, str]]:
    """``[{"Key"}]`` of every object under ``prefix`` (with ``versions``: ``{"Key", "VersionId"}`` of every version
    and delete marker), across pages."""
    if not versions:
        return [{"Key": obj["Key"]} for page in list_pages(loc) for obj in page]
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    keys: list[dict[str, str]] = []
    while True:
        page = _call(loc, loc.fs.call_s3, "list_object_versions", **kwargs)
        keys += [{"Key": v["Key"], "VersionId": v["VersionId"]}
                 for v in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]
        if not page.get("IsTruncated"):
            return keys
        kwargs["KeyMarker"] = page["NextKeyMarker"]
        if page.get("NextVersionIdMarker"):
            kwargs["VersionIdMarker"] = page["NextVersionIdMarker"]


def _remove_local(path: str) -> Removal:
    out = Removal()
    for folder, _, files in os.walk(path, topdown=False):
        for name in files:
            try:
                os.remove(os.path.join(folder, name))
                out.removed += 1
            except OSError as err:
                out.errors.append(f"{os.path.join(folder, name)}: {err.strerror or err}")
        try:
            os.rmdir(folder)
        except OSError as err:
            if not out.errors:
                out.errors.append(f"{folder}: {err.strerror or err}")
    return out


def bucket_versioning(loc: Location) -> str | None:
    """``"Enabled"``/``"Suspended"`` for a versioned S3 bucket (deletes there only add delete markers); ``None`` for
    an unversioned bucket, a local folder, or when S3 does not say."""
    if not loc.is_s3:
        return None
    try:
        return _call(loc, loc.fs.call_s3, "get_bucket_versioning", Bucket=loc.path.split("/")[0]).get("Status")
    except Exception:
        return None


def ray_storage(loc: Location) -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for ``ray.train.RunConfig``."""
    if loc.is_s3:
        return loc.path, loc.arrow
    return loc.path, None
