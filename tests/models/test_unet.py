"""Every valid U-Net variant builds and trains on odd-sized inputs; options change what they should."""

from __future__ import annotations

import itertools

import pytest
import torch

from unet_dist.config import ModelConfig
from unet_dist.models import UNet, Variant, create_unet, get_backbone, registry_info, variants
from unet_dist.models.zoo import variant_config

H, W = 45, 61


def _step(model: UNet, in_channels: int, batch: int = 2, size: tuple[int, int] = (H, W)) -> torch.Tensor:
    """One forward/backward pass in train mode; returns the logits."""
    model.train()
    out = model(torch.randn(batch, in_channels, *size))
    out.square().mean().backward()
    return out


FULL_DEPTH_FAMILY_HEADS = {"scratch", "vgg11", "resnet18"}


def _depth(v: Variant) -> int:
    """Full depth for every backbone with ``transpose`` and for the smallest of each family with every
    unpooling; depth 3 otherwise (the unpooling modules do not depend on the backbone). Keeps this fast."""
    hi = min(get_backbone(v.backbone).depths[1], 5)
    return hi if v.unpooling == "transpose" or v.backbone in FULL_DEPTH_FAMILY_HEADS else 3


@pytest.mark.parametrize("variant", variants(), ids=lambda v: "-".join(filter(None, v)))
def test_variant_forward_backward(variant: Variant) -> None:
    cfg = variant_config(variant, num_classes=3, depth=_depth(variant))
    model = create_unet(cfg)
    out = _step(model, cfg.in_channels)
    assert out.shape == (2, 3, H, W)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("activation", "norm"), list(itertools.product(registry_info()["activations"], registry_info()["norms"])))
def test_activation_norm(activation: str, norm: str) -> None:
    model = create_unet(ModelConfig(activation=activation, norm=norm, base_filters=4, depth=3, dropout=0.1))
    assert _step(model, 1).shape == (2, 2, H, W)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"batch": "BatchNorm2d", "group": "GroupNorm", "instance": "InstanceNorm2d"}.get(norm, "Conv2d") in kinds
    assert norm != "none" or not kinds & {"BatchNorm2d", "GroupNorm", "InstanceNorm2d"}


@pytest.mark.parametrize("backbone", ["scratch", "vgg11", "resnet18"])
def test_attention_gates(backbone: str) -> None:
    depth = 3
    plain = create_unet(ModelConfig(backbone=backbone, depth=depth, base_filters=8))
    gated = create_unet(ModelConfig(backbone=backbone, depth=depth, base_filters=8, attention=True))
    assert all(level.gate is None for level in plain.decoder)
    assert sum(level.gate is not None for level in gated.decoder) == depth
    assert sum(p.numel() for p in gated.parameters()) > sum(p.numel() for p in plain.parameters())
    assert _step(gated, 1).shape == (2, 2, H, W)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("backbone", ["scratch", "vgg13_bn", "resnet34"])
def test_input_channels(backbone: str, in_channels: int) -> None:
    model = create_unet(ModelConfig(backbone=backbone, in_channels=in_channels, depth=3, base_filters=8))
    assert _step(model, in_channels, size=(33, 70)).shape == (2, 2, 33, 70)


@pytest.mark.parametrize("num_classes", [1, 2, 5])
def test_output_activations(num_classes: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, H, W)
    for name in registry_info()["output_activations"]:
        model = create_unet(ModelConfig(num_classes=num_classes, output_activation=name, depth=3, base_filters=4)).eval()
        logits = model(x)
        probs = model.predict(x)
        assert logits.shape == probs.shape == (2, num_classes, H, W)
        assert not probs.requires_grad and logits.requires_grad
        if name == "none":
            assert torch.equal(probs, logits.detach())
        elif name == "sigmoid":
            assert torch.allclose(probs, torch.sigmoid(logits.detach()))
            assert probs.min() >= 0 and probs.max() <= 1
        else:
            assert torch.allclose(probs.sum(dim=1), torch.ones(2, H, W), atol=1e-5)


@pytest.mark.parametrize("size", [(16, 16), (17, 23), (64, 1), (100, 37)])
def test_any_input_size(size: tuple[int, int]) -> None:
    model = create_unet(ModelConfig(depth=6, base_filters=4)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, *size)).shape == (1, 2, *size)


def test_scratch_width_follows_config() -> None:
    small = create_unet(ModelConfig(base_filters=4, depth=3, convs_per_level=1))
    big = create_unet(ModelConfig(base_filters=16, depth=5, convs_per_level=3))
    assert small.encoder.out_channels == [4, 8, 16, 32]
    assert big.encoder.out_channels == [16, 32, 64, 128, 256, 512]
    assert sum(p.numel() for p in big.parameters()) > 100 * sum(p.numel() for p in small.parameters())


def test_channels_last_model_takes_its_input_in_its_own_memory_format() -> None:
    """train.channels_last (default, CPU too): the model converts any input, so every caller runs the same kernels."""
    torch.manual_seed(0)
    model = create_unet(ModelConfig(base_filters=8, depth=3)).eval()
    x = torch.randn(2, 1, 40, 48)
    plain = model(x)
    assert model.memory_format == torch.contiguous_format
    model = model.to(memory_format=torch.channels_last)
    assert model.memory_format == torch.channels_last
    assert torch.equal(model(x), model(x.contiguous(memory_format=torch.channels_last)))
    assert torch.allclose(model(x), plain, atol=1e-5)
    assert set(model.state_dict()) == set(create_unet(ModelConfig(base_filters=8, depth=3)).state_dict())
