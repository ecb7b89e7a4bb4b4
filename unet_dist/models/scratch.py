"""The classic U-Net encoder (Ronneberger et al. 2015), built from configurable conv blocks."""

from __future__ import annotations

import torch
from torch import nn

from unet_dist.config import ModelConfig
from unet_dist.models.blocks import POOLING, ConvBlock, Encoder, pool
from unet_dist.models.registry import register_backbone


class ScratchEncoder(Encoder):
    """``depth + 1`` conv blocks with ``base_filters · 2^k`` channels, joined by ``cfg.pooling``.

    Dropout applies to the deepest block only (as in the original U-Net's contracting path).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__("scratch")
        widths = [cfg.base_filters * 2**k for k in range(cfg.depth + 1)]
        self.blocks = nn.ModuleList(
            ConvBlock(cfg.in_channels if k == 0 else widths[k - 1], widths[k], cfg.convs_per_level, cfg.activation,
                      cfg.norm, cfg.dropout if k == cfg.depth else 0.0)
            for k in range(cfg.depth + 1)
        )
        self.pools = nn.ModuleList(POOLING.get(cfg.pooling)(widths[k]) for k in range(cfg.depth))
        if cfg.unpooling == "maxunpool":
            for p in self.pools:
                p.return_indices = True
        self.out_channels = self.decoder_channels = widths
        self.stem_key = "blocks.0.0.weight"

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        features, indices = [self.blocks[0](x)], []
        for down, block in zip(self.pools, self.blocks[1:]):
            x, idx = pool(down, features[-1])
            features.append(block(x))
            indices.append(idx)
        return features, indices


@register_backbone("scratch")
def scratch(name: str, cfg: ModelConfig) -> Encoder:
    return ScratchEncoder(cfg)
