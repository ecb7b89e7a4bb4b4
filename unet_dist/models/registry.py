"""Backbone registry (timm's ``register_model`` / ``create_model`` pattern).

A backbone family is one builder function ``(name, cfg) -> Encoder`` decorated with :func:`register_backbone`,
which records the names it builds; what each name supports is its row in :mod:`unet_dist.catalog`, which config
validation reads without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from unet_dist import catalog
from unet_dist.catalog import maxunpool_problem  # noqa: F401  (the rule lives with the catalog; re-exported)
from unet_dist.config import ModelConfig
from unet_dist.models.blocks import ACTIVATIONS, NORMS, OUTPUT_ACTIVATIONS, POOLING, UNPOOLING, Encoder
from unet_dist.registry import Registry

EncoderBuilder = Callable[[str, ModelConfig], Encoder]

BACKBONES: Registry[EncoderBuilder] = Registry("backbone", key="model.backbone")
"""Encoder builders; what each name supports is its row in :data:`unet_dist.catalog.BACKBONES`."""


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about one backbone name: its builder and its catalog row."""

    name: str
    build: EncoderBuilder
    depths: tuple[int, int]
    maxunpool: str | None = None
    """Why maxunpool cannot be used (None: it can)."""
    torchvision: bool = False
    """Whether ``name`` is a torchvision model with a weights enum."""
    pooling: bool = False
    """Whether ``model.pooling`` applies (scratch only)."""


def register_backbone(*names: str, depths: tuple[int, int] | None = None, maxunpool: str | None = None,
                      torchvision: bool = False, pooling: bool = False) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator registering one encoder builder under each of ``names``. Names the catalog lists take their row
    from it; a new family passes ``depths`` (and the rest) and gets a catalog row, so configs validate it too."""

    def deco(fn: EncoderBuilder) -> EncoderBuilder:
        for name in names:
            if name not in catalog.BACKBONES:
                if depths is None:
                    raise ValueError(f"backbone {name!r} is not in unet_dist.catalog: pass depths=(lo, hi)")
                catalog.BACKBONES[name] = catalog.BackboneInfo(depths, maxunpool, torchvision, pooling)
            BACKBONES.add(name, fn)
        return fn

    return deco


def list_backbones() -> list[str]:
    return BACKBONES.list()


def get_backbone(name: str) -> BackboneSpec:
    """The spec of ``name``; an unknown name is a ConfigError naming model.backbone and the choices."""
    info = catalog.backbone_info(name)
    return BackboneSpec(name, BACKBONES.get(name), info.depths, info.maxunpool, info.torchvision, info.pooling)


def check_model_config(cfg: ModelConfig) -> None:
    """The catalog's checks (run by ModelConfig's validation); raises a one-line ConfigError naming the key."""
    catalog.check_model_choices(cfg.backbone, cfg.depth, cfg.pooling, cfg.unpooling, cfg.weights)


def create_encoder(cfg: ModelConfig) -> Encoder:
    check_model_config(cfg)
    return get_backbone(cfg.backbone).build(cfg.backbone, cfg)


def registry_info() -> dict[str, list[str]]:
    """Every choice per option, for ``unet-dist models`` and docs."""
    return {
        "backbones": list_backbones(),
        "pooling": POOLING.list(),
        "unpooling": UNPOOLING.list(),
        "activations": ACTIVATIONS.list(),
        "output_activations": OUTPUT_ACTIVATIONS.list(),
        "norms": NORMS.list(),
    }
