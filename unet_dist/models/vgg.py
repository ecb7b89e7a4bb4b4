"""VGG encoders reusing torchvision's ``features`` (so torchvision VGG state dicts load as-is)."""

from __future__ import annotations

import torch
from torch import nn

from unet_dist.config import ModelConfig
from unet_dist.models.blocks import Encoder, init_like_torchvision, pool
from unet_dist.models.registry import register_backbone


class VGGEncoder(Encoder):
    """Levels are VGG's five conv stages; the skip is taken before each max-pool.

    With ``depth=5`` the last level is the output of the fifth pool, so the encoder holds exactly
    torchvision's ``features``. The pools return indices when the decoder max-unpools.
    """

    def __init__(self, name: str, cfg: ModelConfig) -> None:
        import torchvision  # here, not at import: 1.3 s a process (a worker, a CLI) that builds no torchvision encoder

        super().__init__(name, torchvision_name=name)
        with torch.device("meta"):
            full = getattr(torchvision.models, name)(weights=None)
        pools = [i for i, m in enumerate(full.features) if isinstance(m, nn.MaxPool2d)]
        self.features = full.features[: len(full.features) if cfg.depth == len(pools) else pools[cfg.depth]]
        if cfg.in_channels != 3:
            first = self.features[0]
            self.features[0] = nn.Conv2d(cfg.in_channels, first.out_channels, 3, padding=1)
        self.features.to_empty(device="cpu")
        init_like_torchvision(self.features)
        self.foreign_keys = frozenset(full.state_dict()) - frozenset(self.state_dict())
        self.stem_key = "features.0.weight"
        channels = []
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                width = m.out_channels
            elif isinstance(m, nn.MaxPool2d):
                channels.append(width)
                m.return_indices = cfg.unpooling == "maxunpool"
        self.out_channels = self.decoder_channels = [*channels, width]

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        features, indices = [], []
        for m in self.features:
            if isinstance(m, nn.MaxPool2d):
                features.append(x)
                x, idx = pool(m, x)
                indices.append(idx)
            else:
                x = m(x)
        features.append(x)
        return features, indices


@register_backbone("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
def vgg(name: str, cfg: ModelConfig) -> Encoder:
    return VGGEncoder(name, cfg)
