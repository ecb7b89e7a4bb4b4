"""No S3 credential in any byte unet-dist or Ray writes to storage or local disk (Ray's own session folder aside):
the session's shared campaign and run on the S3 test server (keys only in the environment, tests/conftest.py), and a
tiny campaign plus a single ``fit`` with the keys only in the config. Every object under the test's prefix and every file under the
test's local folders is read back and searched, raw and as the hex/base64 Tune uses for pickles inside JSON."""

from __future__ import annotations

import base64
import gzip
import io
import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import S3_KEY, S3_SECRET
from unet_dist.runs import CampaignDir, RunDir
from unet_dist.storage import resolve

SECRETS = (S3_SECRET, S3_KEY)


def _needles(secret: str) -> list[bytes]:
    raw = secret.encode()
    out = [raw, raw.hex().encode(), raw.hex().upper().encode(), raw.decode().encode("utf-16-le")]
    for shift in range(3):  # base64 of the secret at any alignment: the stable middle of its encoding
        enc = base64.b64encode(b"\0" * shift + raw)[4 if shift else 0:]
        out.append(enc[: len(enc) - 4])
    return out


NEEDLES = {s: _needles(s) for s in SECRETS}


def _leaks(data: bytes, depth: int = 0) -> list[str]:
    """The secrets found in ``data``, also inside gzip and zip (torch checkpoints) payloads."""
    found = [s for s, needles in NEEDLES.items() if any(n in data for n in needles)]
    if depth < 2 and data[:2] == b"\x1f\x8b":
        try:
            found += _leaks(gzip.decompress(data), depth + 1)
        except (OSError, EOFError):
            pass
    if depth < 2 and data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for name in z.namelist():
                    found += _leaks(z.read(name), depth + 1)
        except zipfile.BadZipFile:
            pass
    return found


def _scan_s3(server: dict, prefix: str) -> tuple[int, dict[str, list[str]]]:
    import s3fs

    fs = s3fs.S3FileSystem(key=server["key"], secret=server["secret"], endpoint_url=server["endpoint_url"],
                           skip_instance_cache=True)
    paths = fs.find(prefix)
    leaks = {p: found for p in paths if (found := _leaks(fs.cat_file(p)))}
    return len(paths), leaks


def _scan_local(roots: list[Path], since: float, exclude: list[Path]) -> tuple[int, dict[str, list[str]]]:
    n, leaks = 0, {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = [d for d in dirnames if not any((here / d).resolve() == e for e in exclude)]
            for name in filenames:
                path = here / name
                try:
                    if path.is_symlink() or not path.is_file() or path.stat().st_mtime < since:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                n += 1
                if found := _leaks(data):
                    leaks[str(path)] = found
    return n, leaks


def _campaign_cfg(dataset: str, storage: str, name: str, *overrides: str):
    from tests.conftest import _small_config

    cfg = _small_config(dataset, storage, "data.crop_size=32", "train.log_images=1", "train.num_to_keep=1", "train.epochs=1",
                        "resources.num_workers=1", "train.warmup_epochs=0", f"tune.name={name}", "tune.num_samples=1",
                        "tune.grace_period=1", *overrides)
    space = {"train.lr": {"grid": [0.01]}}  # one trial: the trial path is what is checked, not the search
    return cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"search_space": space})})


def _ray_results() -> list[Path]:
    return [Path("~/ray_results").expanduser()]


@pytest.mark.ray
@pytest.mark.s3
@pytest.mark.own_ray
def test_no_credential_in_any_written_byte(s3_server, s3_uri, shared_campaign, ray_tmpdir, synthetic_dataset, tmp_path,
                                           monkeypatch) -> None:
    import ray

    from tests.conftest import SESSION_START
    from unet_dist.train import fit
    from unet_dist.session import ray_session
    from unet_dist.tune import run_campaign

    monkeypatch.chdir(tmp_path)
    t0 = time.time()

    # 1. keys only in the environment: the shared campaign and run, on the suite's shared local Ray
    assert shared_campaign["cfg"].storage.access_key_id is None and os.environ["AWS_SECRET_ACCESS_KEY"] == S3_SECRET

    # 2. keys only in the config: a Ray this session starts, whose processes never had them in their environment
    ray.shutdown()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    keys = (f"storage.access_key_id={S3_KEY}", f"storage.secret_access_key={S3_SECRET}")
    cfg_cfg = _campaign_cfg(synthetic_dataset, s3_uri, "cfgkeys", *keys)
    fit_cfg = _campaign_cfg(synthetic_dataset, s3_uri, "unused", *keys, "train.name=fitkeys")
    assert cfg_cfg.storage.secret_access_key.get_secret_value() == S3_SECRET
    with ray_session(cfg_cfg):
        summary = run_campaign(cfg_cfg, progress=False)
        assert summary.status == "finished" and summary.counts == {"finished": 1}, summary.counts
        run = fit(fit_cfg, progress=False)
        assert run.epochs == 1 and run.best_checkpoint
    t1 = time.time()
    for name, value in (("AWS_ACCESS_KEY_ID", S3_KEY), ("AWS_SECRET_ACCESS_KEY", S3_SECRET)):
        monkeypatch.setenv(name, value)

    # everything written: the S3 prefixes (records, metrics, events, TensorBoard, checkpoints, Tune's state) ...
    root, shared = resolve(s3_uri), resolve(shared_campaign["s3"])
    for campaign in (CampaignDir(root / "cfgkeys"), CampaignDir(shared / shared_campaign["campaign"])):
        assert campaign.read_record()["status"] == "finished"
        assert (campaign.loc / "tune" / "tuner.pkl").exists()
        assert all(run.checkpoints() for run in campaign.trials().values())
    for run in (RunDir(root / "fitkeys"), RunDir(shared / shared_campaign["run"])):
        assert run.read_record()["status"] == "finished"
    scans = [_scan_s3(s3_server, uri.removeprefix("s3://")) for uri in (s3_uri, shared_campaign["s3"])]
    n_objects, s3_leaks = sum(n for n, _ in scans), {k: v for _, leaks in scans for k, v in leaks.items()}
    # ... and local disk since the session began: this test's folder, Ray's temp root outside its session folders,
    # ~/ray_results
    sessions = [p.resolve() for p in (*ray_tmpdir.glob("session_*"), *ray_tmpdir.glob("ray/session_*"))]
    n_files, local_leaks = _scan_local([tmp_path, ray_tmpdir, *_ray_results()], SESSION_START, sessions)
    print(f"cfgkeys campaign + fit {t1 - t0:.1f} s; scanned {n_objects} objects, {n_files} local files", file=sys.stderr)
    assert n_objects > 60
    assert not s3_leaks and not local_leaks, "\n".join(f"{path}: {found}" for path, found in {**s3_leaks, **local_leaks}.items())
