"""Every valid backbone × pooling × unpooling combination, and a CPU smoke run over them."""

from __future__ import annotations

import time
from typing import NamedTuple, Sequence

import torch

from unet_dist.config import ModelConfig
from unet_dist.models.blocks import POOLING, UNPOOLING
from unet_dist.models.registry import get_backbone, list_backbones, maxunpool_problem
from unet_dist.models.unet import UNet


class Variant(NamedTuple):
    backbone: str
    pooling: str | None
    """None where the backbone has its own down-sampling."""
    unpooling: str


class SmokeRow(NamedTuple):
    backbone: str
    pooling: str
    unpooling: str
    params: int
    output_shape: tuple[int, ...]
    seconds: float


def variants(backbones: Sequence[str] | None = None) -> list[Variant]:
    """The combinations :func:`~unet_dist.models.check_model_config` accepts, in registry order."""
    out = []
    for name in backbones or list_backbones():
        spec = get_backbone(name)
        for pooling in POOLING if spec.pooling else [None]:
            for unpooling in UNPOOLING:
                if unpooling == "maxunpool" and maxunpool_problem(name, pooling):
                    continue
                out.append(Variant(name, pooling, unpooling))
    return out


def variant_config(v: Variant, **overrides: object) -> ModelConfig:
    """A small config for one variant: 8 base filters, deepest allowed depth up to 5 unless overridden."""
    fields: dict[str, object] = {"backbone": v.backbone, "unpooling": v.unpooling, "base_filters": 8,
                                 "depth": min(get_backbone(v.backbone).depths[1], 5)}
    if v.pooling:
        fields["pooling"] = v.pooling
    return ModelConfig(**{**fields, **overrides})


def smoke_variants(backbones: Sequence[str] | None = None, size: tuple[int, int] = (45, 61), batch: int = 2,
                   in_channels: int = 1, num_classes: int = 2) -> list[SmokeRow]:
    """Build each variant and run one forward/backward pass on a random odd-sized CPU batch."""
    rows = []
    for v in variants(backbones):
        start = time.perf_counter()
        model = UNet(variant_config(v, in_channels=in_channels, num_classes=num_classes)).train()
        out = model(torch.randn(batch, in_channels, *size))
        out.mean().backward()
        rows.append(SmokeRow(v.backbone, v.pooling or "-", v.unpooling, sum(p.numel() for p in model.parameters()),
                             tuple(out.shape), time.perf_counter() - start))
    return rows
