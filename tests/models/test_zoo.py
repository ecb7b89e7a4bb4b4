"""The variant list is exactly what check_model_config accepts; the smoke run reports real rows."""

from __future__ import annotations

import itertools

import pytest

from unet_dist.config import ModelConfig
from unet_dist.errors import ConfigError
from unet_dist.models import check_model_config, list_backbones, registry_info, smoke_variants, variants


def _accepted(backbone: str, pooling: str, unpooling: str) -> bool:
    try:
        check_model_config(ModelConfig(backbone=backbone, pooling=pooling, unpooling=unpooling))
    except (ConfigError, ValueError):
        return False
    return True


def test_variants_are_the_accepted_combinations() -> None:
    info = registry_info()
    listed = {(v.backbone, v.pooling or "max", v.unpooling) for v in variants()}
    for backbone, pooling, unpooling in itertools.product(list_backbones(), info["pooling"], info["unpooling"]):
        if backbone != "scratch" and pooling != "max":
            continue
        assert ((backbone, pooling, unpooling) in listed) is _accepted(backbone, pooling, unpooling)


def test_smoke_variants_rows() -> None:
    rows = smoke_variants(["scratch", "vgg11"], size=(21, 34), num_classes=3)
    assert [(r.backbone, r.pooling, r.unpooling) for r in rows] == [
        (v.backbone, v.pooling or "-", v.unpooling) for v in variants(["scratch", "vgg11"])
    ]
    assert all(r.output_shape == (2, 3, 21, 34) and r.params > 0 and r.seconds > 0 for r in rows)
    vgg = [r for r in rows if r.backbone == "vgg11"]
    assert min(r.params for r in vgg) > max(r.params for r in rows if r.backbone == "scratch")
    assert set(rows[0]._asdict()) == {"backbone", "pooling", "unpooling", "params", "output_shape", "seconds"}


def test_smoke_rejects_unknown_backbone() -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'unet3d'"):
        smoke_variants(["unet3d"])
