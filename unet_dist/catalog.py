"""The model catalog: every backbone and model choice as plain data, so a config is checked without importing torch.

``models/`` builds what this table lists (each registered builder must have its row here, checked in tests), and
``config.py`` validates against it: depth ranges, max-unpooling rules and torchvision weights names are refused when
a config is read, in milliseconds, before any cluster starts. The torchvision names are the members of torchvision's
weights enums (``tests/models/test_weights.py`` checks them against torchvision itself).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from unet_dist.errors import ConfigError

CHOICES: dict[str, list[str]] = {
    "model.pooling": ["max", "avg", "conv"],
    "model.unpooling": ["transpose", "bilinear", "nearest", "pixelshuffle", "maxunpool"],
    "model.activation": ["relu", "leaky_relu", "elu", "gelu", "silu", "mish"],
    "model.output_activation": ["none", "sigmoid", "softmax"],
    "model.norm": ["batch", "group", "instance", "none"],
    "train.loss": ["ce", "bce", "dice", "jaccard", "focal", "dice_ce"],
    "train.optimizer": ["adam", "adamw", "sgd"],
    "train.scheduler": ["none", "cosine", "poly", "step"],
    "tune.scheduler": ["asha", "hyperband", "fifo"],
    "tune.search": ["random", "grid", "optuna"],
}
"""The names each registry-backed config key accepts: the one list. Config validation reads it (no torch); the
:class:`~unet_dist.registry.Registry` of a key builds each name and adds the names registered later (a user's
``register_loss("mine")``), so configs accept those too. Tests check every registry against its list."""

UNPOOLING = CHOICES["model.unpooling"]


def check_choice(key: str, value: str) -> str:
    """``value`` if ``key`` accepts it, else a ValueError naming the key and the choices (in the registry's words)."""
    if value not in CHOICES[key]:
        what = "search algorithm" if key == "tune.search" else key.split(".")[-1].replace("_", " ")
        raise ValueError(f"{key}: unknown {what} {value!r}; choose one of: {', '.join(CHOICES[key])}")
    return value


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone name supports, known before anything is built."""

    depths: tuple[int, int]
    maxunpool: str | None = None
    """Why maxunpool cannot be used (None: it can)."""
    torchvision: bool = False
    """Whether the name is a torchvision model with a weights enum."""
    pooling: bool = False
    """Whether ``model.pooling`` applies (scratch only)."""
    weights_enum: str | None = None
    """torchvision's weights enum class name (``ResNet34_Weights``)."""
    weights: tuple[str, ...] = field(default=())
    """The members of that enum."""


_RESNET_NO_MAXUNPOOL = "ResNet down-samples with strided convolutions, so its levels have no max-pooling indices"


def _resnet(enum: str, *weights: str) -> BackboneInfo:
    return BackboneInfo((1, 5), _RESNET_NO_MAXUNPOOL, True, weights_enum=enum, weights=weights)


def _vgg(enum: str, *weights: str) -> BackboneInfo:
    return BackboneInfo((1, 5), torchvision=True, weights_enum=enum, weights=weights)


BACKBONES: dict[str, BackboneInfo] = {
    "scratch": BackboneInfo((3, 6), pooling=True),
    "vgg11": _vgg("VGG11_Weights", "IMAGENET1K_V1"),
    "vgg11_bn": _vgg("VGG11_BN_Weights", "IMAGENET1K_V1"),
    "vgg13": _vgg("VGG13_Weights", "IMAGENET1K_V1"),
    "vgg13_bn": _vgg("VGG13_BN_Weights", "IMAGENET1K_V1"),
    "vgg16": _vgg("VGG16_Weights", "IMAGENET1K_V1", "IMAGENET1K_FEATURES"),
    "vgg16_bn": _vgg("VGG16_BN_Weights", "IMAGENET1K_V1"),
    "vgg19": _vgg("VGG19_Weights", "IMAGENET1K_V1"),
    "vgg19_bn": _vgg("VGG19_BN_Weights", "IMAGENET1K_V1"),
    "resnet18": _resnet("ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet34": _resnet("ResNet34_Weights", "IMAGENET1K_V1"),
    "resnet50": _resnet("ResNet50_Weights", "IMAGENET1K_V1", "IMAGENET1K_V2"),
    "resnet101": _resnet("ResNet101_Weights", "IMAGENET1K_V1", "IMAGENET1K_V2"),
    "resnet152": _resnet("ResNet152_Weights", "IMAGENET1K_V1", "IMAGENET1K_V2"),
}
"""Backbone name -> :class:`BackboneInfo`; :func:`unet_dist.models.register_backbone` adds rows for new families."""

_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")


def backbone_info(name: str) -> BackboneInfo:
    """The row of ``name``; an unknown name is a ConfigError naming model.backbone and the choices."""
    if name not in BACKBONES:
        raise ConfigError(f"model.backbone: unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def is_weights_file(ref: str) -> bool:
    """A URI, a path with a separator or a torch file suffix, or an existing local file or folder."""
    return "://" in ref or "/" in ref or os.sep in ref or ref.endswith(_FILE_SUFFIXES) or Path(ref).exists()


def maxunpool_problem(backbone: str, pooling: str | None) -> str | None:
    """Why ``model.unpooling=maxunpool`` cannot decode this encoder (None: it can), as a one-line error.

    Max-unpooling needs the encoder's max-pooling indices: a backbone without them never can, and a
    backbone whose down-sampling is ``model.pooling`` can only with ``pooling=max``.
    """
    info = backbone_info(backbone)
    others = ", ".join(u for u in UNPOOLING if u != "maxunpool")
    if info.maxunpool:
        return (f"model.unpooling: 'maxunpool' cannot be used with backbone {backbone!r}: {info.maxunpool}; "
                f"choose one of: {others}")
    if info.pooling and pooling != "max":
        return (f"model.unpooling: 'maxunpool' needs the pooling indices of max pooling, but model.pooling is "
                f"{pooling!r}; set model.pooling=max or choose another unpooling ({others})")
    return None


def weights_member(backbone: str, name: str) -> str:
    """The member of ``backbone``'s torchvision weights enum that ``name`` means (``DEFAULT``, ``IMAGENET1K_V1`` or
    ``ResNet34_Weights.IMAGENET1K_V1``), or a one-line ConfigError listing the choices."""
    info = backbone_info(backbone)
    if not info.torchvision:
        raise ConfigError(f"model.weights: backbone {backbone!r} has no torchvision weights; "
                          f"pass a state-dict file (local path or s3://) instead of {name!r}")
    choices = ", ".join(["DEFAULT", *info.weights])
    if "." in name:
        enum, _, member = name.partition(".")
        owners = [b for b, i in BACKBONES.items() if i.weights_enum == enum and member in i.weights]
        if not owners:
            raise ConfigError(f"model.weights: unknown torchvision weights {name!r}; for {backbone} choose one of: "
                              f"{choices} (or a state-dict file)")
        if enum != info.weights_enum:
            raise ConfigError(f"model.weights: {name} are weights for another model, not {backbone}; "
                              f"choose one of: {choices}")
        return member
    if name != "DEFAULT" and name not in info.weights:
        raise ConfigError(f"model.weights: {name!r} is neither a torchvision weights name for {backbone} "
                          f"(choose one of: {choices}) nor a state-dict file")
    return name


def check_model_choices(backbone: str, depth: int, pooling: str, unpooling: str, weights: str | None) -> None:
    """Every check a model config needs beyond its field types; raises a one-line ConfigError naming the key."""
    lo, hi = backbone_info(backbone).depths
    if not lo <= depth <= hi:
        raise ConfigError(f"model.depth: {depth} is out of range for backbone {backbone!r}; allowed: {lo}-{hi}")
    if unpooling == "maxunpool" and (problem := maxunpool_problem(backbone, pooling)):
        raise ConfigError(problem)
    if weights and not is_weights_file(weights):
        weights_member(backbone, weights)
