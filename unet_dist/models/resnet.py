"""ResNet encoders reusing torchvision's stem and ``layer1..4`` (torchvision state dicts load as-is)."""

from __future__ import annotations

import torch
from torch import nn

from unet_dist.config import ModelConfig
from unet_dist.models.blocks import Encoder, init_like_torchvision
from unet_dist.models.registry import register_backbone

_DECODER_WIDTHS = (32, 64, 64, 128, 256, 512)


class ResNetEncoder(Encoder):
    """Level 0 is the input itself, level 1 the stem (1/2), levels 2..5 ``layer1..layer4`` (1/4..1/32).

    The decoder uses ResNet-18 widths for every depth of ResNet, so ResNet-50+ skips (up to 2048
    channels) feed a decoder of moderate size.
    """

    def __init__(self, name: str, cfg: ModelConfig) -> None:
        import torchvision  # here, not at import: 1.3 s a process (a worker, a CLI) that builds no torchvision encoder

        super().__init__(name, torchvision_name=name)
        with torch.device("meta"):
            full = getattr(torchvision.models, name)(weights=None)
        self.foreign_keys = frozenset(full.state_dict())
        self.conv1 = full.conv1 if cfg.in_channels == 3 else nn.Conv2d(cfg.in_channels, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu, self.maxpool = full.bn1, full.relu, full.maxpool
        self.layer_names = [f"layer{i}" for i in range(1, cfg.depth)]
        for n in self.layer_names:
            setattr(self, n, getattr(full, n))
        self.to_empty(device="cpu")
        init_like_torchvision(self)
        self.foreign_keys -= frozenset(self.state_dict())
        self.stem_key = "conv1.weight"
        e = type(full.layer1[0]).expansion
        self.out_channels = [cfg.in_channels, 64, 64 * e, 128 * e, 256 * e, 512 * e][: cfg.depth + 1]
        self.decoder_channels = list(_DECODER_WIDTHS[: cfg.depth + 1])

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        features = [x, self.relu(self.bn1(self.conv1(x)))]
        if self.layer_names:
            x = self.maxpool(features[-1])
            for n in self.layer_names:
                x = getattr(self, n)(x)
                features.append(x)
        return features, [None] * (len(features) - 1)


@register_backbone("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
def resnet(name: str, cfg: ModelConfig) -> Encoder:
    return ResNetEncoder(name, cfg)
