"""Backbone registry (timm's ``register_model`` / ``create_model`` pattern) and ``create_unet``.

A backbone family is one builder function ``(name, cfg) -> Encoder`` decorated with
:func:`register_backbone`, which records the names it builds and what they support.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, get_args

from unet_dist.config import Activation, ModelConfig, Norm, OutputActivation, Pooling, StorageConfig, Unpooling
from unet_dist.errors import ConfigError
from unet_dist.models.blocks import ACTIVATIONS, NORMS, OUTPUT_ACTIVATIONS, POOLING, UNPOOLING, Encoder
from unet_dist.models.weights import is_weights_file, torchvision_weights
from unet_dist.registry import Registry

if TYPE_CHECKING:
    from unet_dist.models.unet import UNet

EncoderBuilder = Callable[[str, ModelConfig], Encoder]

BACKBONES: Registry[EncoderBuilder] = Registry("backbone", key="model.backbone")
"""Encoder builders; each entry's metadata is the rest of its :class:`BackboneSpec`."""


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about one backbone name."""

    name: str
    build: EncoderBuilder
    depths: tuple[int, int]
    maxunpool: str | None = None
    """Why maxunpool cannot be used (None: it can)."""
    torchvision: bool = False
    """Whether ``name`` is a torchvision model with a weights enum."""
    pooling: bool = False
    """Whether ``model.pooling`` applies (scratch only)."""


def register_backbone(*names: str, depths: tuple[int, int], maxunpool: str | None = None, torchvision: bool = False,
                      pooling: bool = False) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator registering one encoder builder under each of ``names``."""

    def deco(fn: EncoderBuilder) -> EncoderBuilder:
        for name in names:
            BACKBONES.add(name, fn, depths=depths, maxunpool=maxunpool, torchvision=torchvision, pooling=pooling)
        return fn

    return deco


def list_backbones() -> list[str]:
    return BACKBONES.list()


def get_backbone(name: str) -> BackboneSpec:
    """The spec of ``name``; an unknown name is a ConfigError naming model.backbone and the choices."""
    return BackboneSpec(name, BACKBONES.get(name), **BACKBONES.meta(name))


def maxunpool_problem(backbone: str, pooling: str | None) -> str | None:
    """Why ``model.unpooling=maxunpool`` cannot decode this encoder (None: it can), as a one-line error.

    Max-unpooling needs the encoder's max-pooling indices: a backbone without them never can, and a
    backbone whose down-sampling is ``model.pooling`` can only with ``pooling=max``.
    """
    spec = get_backbone(backbone)
    others = ", ".join(u for u in UNPOOLING if u != "maxunpool")
    if spec.maxunpool:
        return (f"model.unpooling: 'maxunpool' cannot be used with backbone {backbone!r}: {spec.maxunpool}; "
                f"choose one of: {others}")
    if spec.pooling and pooling != "max":
        return (f"model.unpooling: 'maxunpool' needs the pooling indices of max pooling, but model.pooling is "
                f"{pooling!r}; set model.pooling=max or choose another unpooling ({others})")
    return None


def check_model_config(cfg: ModelConfig) -> None:
    """Registry-dependent checks (run by ModelConfig's validation); raises a one-line ConfigError naming the key."""
    spec = get_backbone(cfg.backbone)
    lo, hi = spec.depths
    if not lo <= cfg.depth <= hi:
        raise ConfigError(f"model.depth: {cfg.depth} is out of range for backbone {cfg.backbone!r}; "
                          f"allowed: {lo}-{hi}")
    if cfg.unpooling == "maxunpool" and (problem := maxunpool_problem(cfg.backbone, cfg.pooling)):
        raise ConfigError(problem)
    if cfg.weights and not is_weights_file(cfg.weights):
        if not spec.torchvision:
            raise ConfigError(f"model.weights: backbone {cfg.backbone!r} has no torchvision weights; "
                              f"{cfg.weights!r} must be a state-dict file (local path or s3://)")
        torchvision_weights(cfg.backbone, cfg.weights)


def create_encoder(cfg: ModelConfig) -> Encoder:
    check_model_config(cfg)
    return get_backbone(cfg.backbone).build(cfg.backbone, cfg)


def create_unet(cfg: ModelConfig, storage: StorageConfig | None = None) -> "UNet":
    """Build the U-Net ``cfg`` describes, loading ``cfg.weights`` into its encoder (S3 via ``storage``)."""
    from unet_dist.models.unet import UNet

    return UNet(cfg, storage=storage)


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


CONFIG_LITERALS = {
    "pooling": get_args(Pooling),
    "unpooling": get_args(Unpooling),
    "activations": get_args(Activation),
    "output_activations": get_args(OutputActivation),
    "norms": get_args(Norm),
}
"""The config's Literal choices, which the registries must equal (checked in tests)."""
