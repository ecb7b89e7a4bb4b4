"""Encoder weights: torchvision parity, state-dict files (local and S3), names, freezing."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Callable

import pytest
import torch
import torchvision
from torchvision.models import ResNet34_Weights, get_model_weights

from unet_dist.config import ModelConfig
from unet_dist.errors import ConfigError
from unet_dist.models import UNet, check_model_config, create_unet, get_backbone, list_backbones, torchvision_weights
from unet_dist.models.weights import check_weights
from unet_dist.storage import resolve

TORCHVISION = [b for b in list_backbones() if get_backbone(b).torchvision]
X = torch.randn(2, 1, 37, 50, generator=torch.Generator().manual_seed(1))


def _save(obj: dict[str, torch.Tensor], uri: str) -> str:
    buf = io.BytesIO()
    torch.save(obj, buf)
    resolve(uri).write_bytes(buf.getvalue())
    return uri


def _seeded(cfg: ModelConfig) -> UNet:
    """Same seed, same decoder initialisation: outputs can then be compared exactly."""
    torch.manual_seed(0)
    return create_unet(cfg).eval()


def _feature_params(model: torch.nn.Module) -> int:
    """What a U-Net encoder reuses: VGG's ``features``, everything of a ResNet but ``fc``."""
    if hasattr(model, "features"):
        return sum(p.numel() for p in model.features.parameters())
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("fc."))


def _trained_source(cfg: ModelConfig) -> UNet:
    """A seeded model whose encoder (weights and BN statistics) then moves away from its initialisation."""
    model = _seeded(cfg)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for t in model.encoder.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand(t.shape, generator=g) * 0.05)
    return model


@pytest.mark.parametrize("backbone", TORCHVISION)
def test_encoder_params_equal_torchvision_features(backbone: str) -> None:
    with torch.device("meta"):
        ref = getattr(torchvision.models, backbone)(weights=None)
    encoder = create_unet(ModelConfig(backbone=backbone, depth=5, in_channels=3)).encoder
    assert sum(p.numel() for p in encoder.parameters()) == _feature_params(ref)
    assert set(encoder.state_dict()) <= set(ref.state_dict())


@pytest.mark.parametrize("backbone", ["scratch", "vgg11_bn", "resnet18"])
def test_local_round_trip(tmp_path: Path, backbone: str) -> None:
    cfg = ModelConfig(backbone=backbone, depth=3, base_filters=8)
    source = _trained_source(cfg)
    path = _save(source.encoder.state_dict(), str(tmp_path / "encoder.pt"))
    loaded = _seeded(cfg.model_copy(update={"weights": path}))
    with torch.no_grad():
        assert torch.equal(loaded(X), source(X))
        assert not torch.equal(_seeded(cfg)(X), source(X))


@pytest.mark.s3
def test_s3_round_trip(s3_uri: str) -> None:
    cfg = ModelConfig(backbone="resnet18", depth=4)
    source = _trained_source(cfg)
    uri = _save(source.encoder.state_dict(), f"{s3_uri}/weights/resnet18-encoder.pt")
    loaded = _seeded(cfg.model_copy(update={"weights": uri}))
    with torch.no_grad():
        assert torch.equal(loaded(X), source(X))
    missing = f"{s3_uri}/weights/nope.pt"
    with pytest.raises(ConfigError, match=rf"cannot read weights file '{missing}'"):
        create_unet(cfg.model_copy(update={"weights": missing}))


@pytest.mark.parametrize("depth", [2, 5])
def test_torchvision_full_model_state_dict(tmp_path: Path, depth: int) -> None:
    torch.manual_seed(3)
    tv = torchvision.models.resnet18(weights=None).eval()
    path = _save(tv.state_dict(), str(tmp_path / "resnet18-full.pth"))
    model = create_unet(ModelConfig(backbone="resnet18", in_channels=3, depth=depth, weights=path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        stem = tv.relu(tv.bn1(tv.conv1(x)))
        assert torch.equal(model.encoder(x)[0][1], stem)
        if depth == 5:
            deepest = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(stem)))))
            assert torch.equal(model.encoder(x)[0][-1], deepest)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_rgb_stem_adapted_to_input_channels(tmp_path: Path, in_channels: int) -> None:
    tv = torchvision.models.resnet18(weights=None)
    path = _save(tv.state_dict(), str(tmp_path / "resnet18.pth"))
    model = create_unet(ModelConfig(backbone="resnet18", in_channels=in_channels, depth=2, weights=path))
    w = model.encoder.conv1.weight
    assert w.shape == (64, in_channels, 7, 7)
    if in_channels == 1:
        assert torch.allclose(w, tv.conv1.weight.sum(dim=1, keepdim=True))
    else:
        rgb = tv.conv1.weight
        assert torch.allclose(w, torch.cat([rgb, rgb[:, :1]], dim=1) * 3 / 4)
    assert model(torch.randn(2, in_channels, 30, 30)).shape == (2, 2, 30, 30)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "encoder.pt"
    with pytest.raises(ConfigError, match=rf"model.weights: cannot read weights file '{missing}'"):
        create_unet(ModelConfig(weights=str(missing)))


def test_not_a_state_dict(tmp_path: Path) -> None:
    bad = tmp_path / "notes.pt"
    bad.write_bytes(b"definitely not a torch file")
    with pytest.raises(ConfigError, match=rf"'{bad}' is not a torch state-dict file"):
        create_unet(ModelConfig(weights=str(bad)))


def test_mismatched_keys_name_the_file(tmp_path: Path) -> None:
    path = _save(create_unet(ModelConfig(backbone="resnet18", depth=3)).encoder.state_dict(), str(tmp_path / "r18.pt"))
    with pytest.raises(ConfigError) as err:
        create_unet(ModelConfig(backbone="resnet34", depth=3, weights=path))
    msg = str(err.value)
    assert path in msg and "'resnet34'" in msg and "missing keys" in msg and "layer1.2.conv1.weight" in msg


def test_mismatched_shapes_name_the_file(tmp_path: Path) -> None:
    path = _save(create_unet(ModelConfig(base_filters=8, depth=3)).encoder.state_dict(), str(tmp_path / "s8.pt"))
    expected = r"s8.pt.*shape mismatch file vs model \(\d+\): blocks.0.0.weight \(8, 1, 3, 3\) vs \(16, 1, 3, 3\)"
    with pytest.raises(ConfigError, match=expected):
        create_unet(ModelConfig(base_filters=16, depth=3, weights=path))


@pytest.mark.parametrize("backbone", TORCHVISION)
def test_weights_names_resolve_without_download(backbone: str) -> None:
    enum = get_model_weights(backbone)
    assert torchvision_weights(backbone, "DEFAULT") is enum.DEFAULT
    first = next(iter(enum))
    assert torchvision_weights(backbone, first.name) is first
    assert torchvision_weights(backbone, str(first)) is first
    check_model_config(ModelConfig(backbone=backbone, weights=first.name))


def test_resnet34_imagenet_name() -> None:
    assert torchvision_weights("resnet34", "IMAGENET1K_V1") is ResNet34_Weights.IMAGENET1K_V1
    assert torchvision_weights("resnet34", "ResNet34_Weights.IMAGENET1K_V1") is ResNet34_Weights.IMAGENET1K_V1
    with pytest.raises(ConfigError, match="ResNet50_Weights.IMAGENET1K_V2 are weights for another model, not resnet34"):
        torchvision_weights("resnet34", "ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(ConfigError, match="choose one of: DEFAULT, IMAGENET1K_V1"):
        torchvision_weights("resnet34", "IMAGENET22K")


def _train_step(model: UNet) -> None:
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 1, 32, 32)).square().mean().backward()
    opt.step()


@pytest.mark.parametrize("backbone", ["scratch", "resnet18"])
def test_freeze_backbone(backbone: str) -> None:
    model = create_unet(ModelConfig(backbone=backbone, depth=3, base_filters=8, freeze_backbone=True))
    before = {k: v.clone() for k, v in model.encoder.named_parameters()}
    _train_step(model)
    assert all(not p.requires_grad and p.grad is None for p in model.encoder.parameters())
    assert all(p.requires_grad and p.grad is not None for p in [*model.decoder.parameters(), *model.head.parameters()])
    assert all(torch.equal(p, before[k]) for k, p in model.encoder.named_parameters())


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_freeze_bn_keeps_running_stats(freeze_bn: bool) -> None:
    model = create_unet(ModelConfig(backbone="resnet18", depth=3, freeze_bn=freeze_bn))
    stats = {k: v.clone() for k, v in model.encoder.state_dict().items() if "running" in k}
    model.eval().train()
    _train_step(model)
    unchanged = all(torch.equal(model.encoder.state_dict()[k], v) for k, v in stats.items())
    assert unchanged is freeze_bn
    bn = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.training is not freeze_bn for m in bn)
    assert all(p.requires_grad is not freeze_bn for m in bn for p in m.parameters())
    assert any(m.training for m in model.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d))


class _Touch:
    """A pickle whose loading runs a shell command that creates ``marker`` (what a hostile weights file does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _pickle_dump(obj: object, path: Path) -> None:
    path.write_bytes(pickle.dumps(obj))


def _torch_zip(obj: object, path: Path) -> None:
    torch.save(obj, path, _use_new_zipfile_serialization=True)


def _one_line_error(cfg: ModelConfig) -> str:
    with pytest.raises(ConfigError) as err:
        check_weights(cfg, None)
    msg = str(err.value)
    assert msg.startswith("model.weights: ") and "\n" not in msg and cfg.weights in msg
    return msg


def test_check_weights_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent" / "encoder.pt"
    assert "cannot read weights file" in _one_line_error(ModelConfig(weights=str(missing)))


def test_check_weights_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "names.pt"
    torch.save(["conv1.weight", "bn1.bias"], path)
    assert "does not hold a state dict of tensors" in _one_line_error(ModelConfig(weights=str(path)))


@pytest.mark.parametrize("save", [_pickle_dump, _torch_zip], ids=["pickle.dump", "torch.save-zip"])
def test_check_weights_refuses_malicious_pickle_without_running_it(tmp_path: Path,
                                                                   save: Callable[[object, Path], None]) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    save({"conv1.weight": _Touch(marker)}, path)
    msg = _one_line_error(ModelConfig(weights=str(path)))
    assert "weights_only=True" in msg and "weights_only=False" not in msg
    if save is _torch_zip:
        assert "refused by the safe loader" in msg and "'posix.system'" in msg
    assert not marker.exists()
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(_Touch(live)))
    assert live.exists(), "the payload is live: an unsafe load would have run it"


def test_check_weights_does_not_fit(tmp_path: Path) -> None:
    path = _save(create_unet(ModelConfig(backbone="resnet18", depth=3)).encoder.state_dict(), str(tmp_path / "r18.pt"))
    msg = _one_line_error(ModelConfig(backbone="resnet34", depth=3, weights=path))
    assert "does not fit backbone 'resnet34'" in msg and "missing keys" in msg


def test_check_weights_good_file_and_names_pass(tmp_path: Path) -> None:
    cfg = ModelConfig(backbone="vgg11", depth=3)
    path = _save(create_unet(cfg).encoder.state_dict(), str(tmp_path / "vgg11.pt"))
    check_weights(ModelConfig(backbone="vgg11", depth=3, weights=path), None)
    check_weights(ModelConfig(backbone="resnet18", weights="IMAGENET1K_V1"), None)
    check_weights(cfg, None)


@pytest.mark.parametrize("backbone", TORCHVISION)
def test_the_catalog_knows_torchvisions_weights_names(backbone: str) -> None:
    """Config validation checks weights names from the catalog, without torchvision: the names must be its own."""
    from unet_dist import catalog

    enum = get_model_weights(backbone)
    info = catalog.BACKBONES[backbone]
    assert info.weights_enum == enum.__name__ and info.weights == tuple(m.name for m in enum)
