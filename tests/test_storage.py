"""storage.resolve on local paths and the real S3 test server, and its errors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unet_dist import storage
from unet_dist.config import StorageConfig
from unet_dist.errors import StorageError


def _roundtrip(loc: storage.Location) -> None:
    f = loc.join("a", "b.bin")
    f.write_bytes(b"\x00payload")
    assert f.exists() and f.read_bytes() == b"\x00payload"
    assert [c.name for c in loc.join("a").ls()] == ["b.bin"]
    table = pa.table({"x": [1, 2, 3]})
    pq.write_table(table, loc.join("t.parquet").path, filesystem=loc.arrow)
    assert pq.read_table(loc.join("t.parquet").path, filesystem=loc.arrow).equals(table)
    loc.join("a").rm()
    assert not f.exists()


def test_local_path_and_file_uri(tmp_path):
    loc = storage.resolve(tmp_path / "store")
    assert not loc.is_s3 and loc.uri == str(tmp_path / "store")
    assert storage.resolve(f"file://{tmp_path}/store").path == loc.path
    _roundtrip(loc)


@pytest.mark.s3
def test_s3_roundtrip(s3_uri):
    loc = storage.resolve(s3_uri)
    assert loc.is_s3 and loc.uri == s3_uri
    _roundtrip(loc)


@pytest.mark.s3
def test_s3_config_endpoint_overrides_env(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    cfg = StorageConfig(endpoint_url=s3_server["endpoint_url"])
    loc = storage.resolve(f"s3://{s3_server['bucket']}/cfg", cfg)
    loc.join("x").write_bytes(b"1")
    assert loc.join("x").read_bytes() == b"1"


@pytest.mark.s3
def test_s3_missing_bucket_is_clear(s3_server):
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-x' does not exist"):
        storage.check_writable(storage.resolve("s3://no-such-bucket-x/p"))


@pytest.mark.s3
def test_s3_wrong_credentials_are_clear(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(StorageError) as err:
        storage.check_writable(storage.resolve(f"s3://{s3_server['bucket']}/p"))
    assert "wrong-secret" not in str(err.value)
    assert "AWS_" in str(err.value)


def test_credentials_in_uri_rejected():
    with pytest.raises(StorageError, match="credentials are not accepted"):
        storage.resolve("s3://key:secret@bucket/prefix")


def test_unsupported_scheme():
    with pytest.raises(StorageError, match="unsupported storage URI"):
        storage.resolve("ftp://host/x")


def test_secrets_never_dumped():
    from unet_dist.config import load_config

    cfg = load_config(overrides=["storage.access_key_id=AKIA_SHOULD_NOT_LEAK", "storage.secret_access_key=s3cr3t"])
    assert cfg.storage.access_key_id.get_secret_value() == "AKIA_SHOULD_NOT_LEAK"
    dumped = str(cfg.to_dict()) + repr(cfg)
    assert "AKIA_SHOULD_NOT_LEAK" not in dumped and "s3cr3t" not in dumped


def test_with_env_settings_ships_endpoint_and_region_never_keys(monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "env-key"), ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                        ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"), ("AWS_REGION", "eu-west-3")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    filled = storage.with_env_settings(StorageConfig(uri="s3://b/p", region="us-east-2"))
    assert filled.endpoint_url == "http://127.0.0.1:2" and filled.region == "us-east-2"
    assert filled.access_key_id is None and filled.secret_access_key is None
    assert storage.credential_env(filled) == {"AWS_ACCESS_KEY_ID": "env-key", "AWS_SECRET_ACCESS_KEY": "env-secret"}


def test_public_config_and_pickled_locations_carry_no_keys(monkeypatch):
    import copy
    import pickle

    from unet_dist.config import load_config

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config(overrides=["storage.uri=s3://b/p", "storage.endpoint_url=http://127.0.0.1:1",
                                 "storage.access_key_id=AKIA_SHOULD_NOT_LEAK", "storage.secret_access_key=s3cr3t"])
    assert storage.credential_env(cfg.storage) == {"AWS_ACCESS_KEY_ID": "AKIA_SHOULD_NOT_LEAK", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    public = storage.public_config(cfg)
    assert public.storage.access_key_id is None and public.storage.endpoint_url == "http://127.0.0.1:1"
    loc = storage.resolve(cfg.storage.uri, cfg.storage) / "run"
    for blob in (pickle.dumps(public), pickle.dumps(loc), pickle.dumps(loc.arrow)):
        assert b"AKIA_SHOULD_NOT_LEAK" not in blob and b"s3cr3t" not in blob
    back = pickle.loads(pickle.dumps(loc))
    assert back == loc and back.storage.endpoint_url == "http://127.0.0.1:1" and "key" not in storage.s3_options(back.storage)
    assert copy.deepcopy(loc).fs is loc.fs  # in-process copies keep their keys


def test_translation_uses_the_s3_error_code_not_the_message():
    from botocore.exceptions import ClientError

    loc = storage.resolve("s3://some-bucket/p")
    reworded = ClientError({"Error": {"Code": "NoSuchBucket", "Message": "AccessDenied 403 Could not connect"}}, "HeadBucket")
    assert str(storage._translate(loc, reworded)) == "bucket 'some-bucket' does not exist: create it (e.g. `aws s3 mb s3://some-bucket`) or fix the URI"
    denied = ClientError({"Error": {"Code": "SignatureDoesNotMatch", "Message": "NoSuchBucket"}}, "PutObject")
    wrapped = PermissionError("NoSuchBucket")
    wrapped.__cause__ = denied
    assert "AWS_SECRET_ACCESS_KEY" in str(storage._translate(loc, wrapped))
    head = ClientError({"Error": {"Code": "403", "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "HeadBucket")
    assert "S3 denied access" in str(storage._translate(loc, head))
    lookalike = RuntimeError("NoSuchBucket InvalidAccessKeyId Could not connect NoCredentials")
    assert storage._translate(loc, lookalike) is lookalike, "message text alone never classifies an error"


def test_unreachable_endpoint_is_clear(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = StorageConfig(endpoint_url=endpoint, access_key_id="k", secret_access_key="s", region="us-east-1")
    with pytest.raises(StorageError, match=f"cannot reach S3 at {endpoint}"):
        storage.resolve("s3://b/p", cfg).exists()
