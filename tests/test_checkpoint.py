"""Checkpoint round trip with weights_only=True, completeness marker, local and S3."""

from __future__ import annotations

import json

import pytest
import torch

from unet_dist.config import Config
from unet_dist.runs import MARKER_FILE, STATE_FILE, RunDir, checkpoint_dir_name
from unet_dist.storage import resolve
from unet_dist import checkpoint as ckpt
from unet_dist.train.optim import create_optimizer, create_scheduler


def _state(epoch: int) -> dict:
    torch.manual_seed(epoch)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    cfg = Config()
    opt = create_optimizer(model.parameters(), cfg.train)
    sched = create_scheduler(opt, cfg.train, 4)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    sched.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": {},
            "epoch": epoch, "config": cfg.to_dict(), "fingerprint": "abc123", "metrics": {"val_iou": 0.5}}


def _assert_same(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["config"] == b["config"] and a["fingerprint"] == b["fingerprint"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k])
    assert a["scheduler"] == b["scheduler"]
    for k, v in a["optimizer"]["state"][0].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][0][k]))


def _upload(local, dest) -> None:
    for f in local.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())


def test_round_trip_local(tmp_path) -> None:
    state = _state(3)
    d = ckpt.save_checkpoint(tmp_path / "epoch_0003", state)
    assert json.loads((d / MARKER_FILE).read_text())["epoch"] == 3
    loaded = ckpt.load_checkpoint(str(d))
    _assert_same(state, loaded)
    torch.load(d / STATE_FILE, weights_only=True)
    assert "secret" not in json.dumps(loaded["config"])


def test_incomplete_checkpoints_are_skipped(tmp_path) -> None:
    for e in (0, 1, 2):
        ckpt.save_checkpoint(tmp_path / checkpoint_dir_name(e), _state(e))
    (tmp_path / "epoch_0002" / MARKER_FILE).unlink()
    with open(tmp_path / "epoch_0001" / STATE_FILE, "ab") as f:
        f.write(b"torn")
    assert list(RunDir(resolve(tmp_path)).checkpoints()) == [0]


@pytest.mark.s3
def test_round_trip_s3(tmp_path, s3_uri) -> None:
    state = _state(1)
    local = ckpt.save_checkpoint(tmp_path / "c", state)
    run = resolve(s3_uri)
    _upload(local, run / "epoch_0001")
    (run / "epoch_0000").join(STATE_FILE).write_bytes(b"partial upload, no marker")
    assert list(RunDir(run).checkpoints()) == [1]
    _assert_same(state, ckpt.load_checkpoint(f"{s3_uri}/epoch_0001"))


def test_missing_checkpoint_is_user_error(tmp_path) -> None:
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(str(tmp_path / "nope"))


def test_any_state_file_name_loads(tmp_path) -> None:
    state = _state(2)
    d = ckpt.save_checkpoint(tmp_path / "epoch_0002", state)
    renamed = tmp_path / "best-model.pt"
    (d / STATE_FILE).rename(renamed)
    _assert_same(state, ckpt.load_checkpoint(str(renamed)))


class _Payload:
    """Unpickling this would create a marker file: the safe loader must refuse it without running it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "epoch_0000"
    bad.mkdir()
    torch.save({"model": {}, "epoch": 0, "payload": _Payload(str(marker))}, bad / STATE_FILE)
    with pytest.raises(ckpt.CheckpointError, match="refused to load") as err:
        ckpt.load_checkpoint(str(bad))
    assert not marker.exists()
    assert "weights_only=False" not in str(err.value) and "\n" not in str(err.value)


def test_truncated_checkpoint_is_one_line_error(tmp_path) -> None:
    d = ckpt.save_checkpoint(tmp_path / "epoch_0001", _state(1))
    data = (d / STATE_FILE).read_bytes()
    (d / STATE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load_checkpoint(str(d))


def test_resume_from_is_checked_before_ray(tmp_path) -> None:
    """A --resume-from checkpoint that does not fit the configured model is a one-line config error up front."""
    from unet_dist.config import load_config
    from unet_dist.errors import ConfigError
    from unet_dist.models import create_unet
    from unet_dist.train.trainer import check_resume_from

    small = load_config(None, ["model.base_filters=8", "model.depth=3"])
    ckpt.save_checkpoint(tmp_path / "epoch_0000", {"model": create_unet(small.model).state_dict(), "epoch": 0})
    check_resume_from(small.model_copy(update={"train": small.train.model_copy(update={"resume_from": str(tmp_path / "epoch_0000")})}))
    bigger = load_config(None, ["model.base_filters=16", "model.depth=3", f"train.resume_from={tmp_path / 'epoch_0000'}"])
    with pytest.raises(ConfigError, match="train.resume_from: .* does not fit the configured model"):
        check_resume_from(bigger)
    with pytest.raises(ConfigError, match="train.resume_from: no checkpoint"):
        check_resume_from(load_config(None, [f"train.resume_from={tmp_path / 'missing'}"]))


def test_marker_records_each_file_size_and_sha256(tmp_path) -> None:
    import hashlib

    d = ckpt.save_checkpoint(tmp_path / "epoch_0004", _state(4))
    marker = json.loads((d / MARKER_FILE).read_text())
    data = (d / STATE_FILE).read_bytes()
    assert marker == {"files": {STATE_FILE: len(data)}, "epoch": 4, "sha256": {STATE_FILE: hashlib.sha256(data).hexdigest()}}


@pytest.mark.parametrize("name", ["../x", "/etc/hostname", "sub/x", "..\\x"])
def test_a_marker_naming_a_path_is_refused_wherever_a_checkpoint_is_read(tmp_path, name: str) -> None:
    (tmp_path / "x").write_bytes(b"outside")
    d = ckpt.save_checkpoint(tmp_path / "epoch_0000", _state(0))
    marker = json.loads((d / MARKER_FILE).read_text())
    marker["files"][name] = 7
    (d / MARKER_FILE).write_text(json.dumps(marker))
    with pytest.raises(ckpt.CheckpointError, match="bad file name") as err:
        ckpt.load_checkpoint(str(d))
    assert repr(name) in str(err.value) and "\n" not in str(err.value)
    assert list(RunDir(resolve(tmp_path)).checkpoints()) == []  # never resumed from either


@pytest.mark.parametrize("tamper", ["subfolder", "marker"])
def test_checkpoint_upload_refuses_names_that_are_not_plain_files(tmp_path, tamper: str) -> None:
    """RunRecorder.upload_checkpoint (Ray's checkpoint_upload_fn) writes plain files of the folder only, checked first."""
    from types import SimpleNamespace

    from unet_dist.runs import MarkerError
    from unet_dist.train.recorder import RunRecorder

    local = ckpt.save_checkpoint(tmp_path / "local", _state(0))
    if tamper == "subfolder":
        (local / "sub").mkdir()
        (local / "sub" / "x").write_bytes(b"x")
    else:
        marker = json.loads((local / MARKER_FILE).read_text())
        (local / MARKER_FILE).write_text(json.dumps({**marker, "files": {**marker["files"], "../../x": 1}}))
    run = RunDir(resolve(tmp_path / "run"))
    with pytest.raises(MarkerError, match="bad file name"):
        RunRecorder.upload_checkpoint(SimpleNamespace(run=run), SimpleNamespace(path=str(local)), "epoch_0000")
    assert not (tmp_path / "run").exists()
