"""The U-Net: a registered encoder, a decoder with skip connections and a 1×1 head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet_dist.config import ModelConfig, StorageConfig
from unet_dist.models.blocks import OUTPUT_ACTIVATIONS, UNPOOLING, AttentionGate, ConvBlock
from unet_dist.models.registry import create_encoder
from unet_dist.models.weights import load_encoder_weights


class DecoderLevel(nn.Module):
    """Up-sample, (optionally gate and) concatenate the skip, then a conv block."""

    def __init__(self, in_ch: int, up_ch: int, skip_ch: int, out_ch: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = UNPOOLING.get(cfg.unpooling)(in_ch, up_ch)
        self.gate = AttentionGate(skip_ch, up_ch, cfg.norm) if cfg.attention else None
        self.conv = ConvBlock(up_ch + skip_ch, out_ch, cfg.convs_per_level, cfg.activation, cfg.norm, cfg.dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, indices: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x, indices, skip.shape[-2:])
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """Encoder–decoder segmentation network configured by :class:`~unet_dist.config.ModelConfig`.

    ``forward(x)`` always returns raw logits ``N × num_classes × H × W`` for any ``H × W`` (the input
    is replicate-padded to a multiple of ``2**depth`` and the output cropped back), because losses
    expect logits. :meth:`activate` applies ``cfg.output_activation`` to logits and :meth:`predict`
    is ``activate(forward(x))`` without gradients, for inference.

    ``cfg.activation``, ``cfg.norm`` and ``cfg.dropout`` shape the decoder (and the scratch encoder);
    torchvision encoders keep their own layers so pretrained weights stay meaningful.
    """

    def __init__(self, cfg: ModelConfig, storage: StorageConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = create_encoder(cfg)
        if cfg.weights:
            load_encoder_weights(self.encoder, cfg.weights, storage)
        channels, widths = self.encoder.out_channels, self.encoder.decoder_channels
        levels, in_ch = [], channels[cfg.depth]
        for k in reversed(range(cfg.depth)):
            up_ch = channels[k] if cfg.unpooling == "maxunpool" else widths[k]
            levels.append(DecoderLevel(in_ch, up_ch, channels[k], widths[k], cfg))
            in_ch = widths[k]
        self.decoder = nn.ModuleList(levels)
        self.head = nn.Conv2d(in_ch, cfg.num_classes, 1)
        self._probe = next(f"decoder.{n}" for n, m in self.decoder.named_modules()
                           if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1)
        if cfg.freeze_backbone:
            self.encoder.requires_grad_(False)
        if cfg.freeze_bn:
            for m in self._encoder_norms():
                m.requires_grad_(False)
            self.train(self.training)

    def _encoder_norms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        return [m for m in self.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> "UNet":
        """As ``nn.Module.train``, but with ``freeze_bn`` the encoder's BatchNorm layers stay in eval mode."""
        super().train(mode)
        if self.cfg.freeze_bn:
            for m in self._encoder_norms():
                m.eval()
        return self

    @property
    def memory_format(self) -> torch.memory_format:
        """channels_last once the model was moved to it (``model.to(memory_format=torch.channels_last)``)."""
        weight = self.get_submodule(self._probe).weight
        return torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits; the input takes the model's memory format, so every caller (training, validation, evaluate,
        predict) runs the same kernels and gets the same numbers."""
        x = x.contiguous(memory_format=self.memory_format)
        h, w = x.shape[-2:]
        m = 2 ** self.cfg.depth
        pad_h, pad_w = -h % m, -w % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        features, indices = self.encoder(x)
        y = features[-1]
        for level, k in zip(self.decoder, reversed(range(self.cfg.depth))):
            y = level(y, features[k], indices[k])
        return self.head(y)[..., :h, :w]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """``cfg.output_activation`` (none, sigmoid or softmax over classes) applied to logits."""
        return OUTPUT_ACTIVATIONS.get(self.cfg.output_activation)(logits)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.forward(x))


def create_unet(cfg: ModelConfig, storage: StorageConfig | None = None) -> UNet:
    """Build the U-Net ``cfg`` describes, loading ``cfg.weights`` into its encoder (S3 via ``storage``)."""
    return UNet(cfg, storage=storage)
