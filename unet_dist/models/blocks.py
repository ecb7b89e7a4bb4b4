"""Building blocks and the small registries behind ModelConfig's choices.

Each :class:`~unet_dist.registry.Registry` maps a config value to a factory, so a new activation, norm,
pooling or unpooling method is one entry here; ``tests/models`` checks every registry against the config's Literals.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unet_dist.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation", key="model.activation")
ACTIVATIONS.add("relu", lambda: nn.ReLU(inplace=True))
ACTIVATIONS.add("leaky_relu", lambda: nn.LeakyReLU(0.01, inplace=True))
ACTIVATIONS.add("elu", lambda: nn.ELU(inplace=True))
ACTIVATIONS.add("gelu", nn.GELU)
ACTIVATIONS.add("silu", lambda: nn.SiLU(inplace=True))
ACTIVATIONS.add("mish", lambda: nn.Mish(inplace=True))

OUTPUT_ACTIVATIONS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry(
    "output activation", key="model.output_activation")
OUTPUT_ACTIVATIONS.add("none", lambda t: t)
OUTPUT_ACTIVATIONS.add("sigmoid", torch.sigmoid)
OUTPUT_ACTIVATIONS.add("softmax", lambda t: torch.softmax(t, dim=1))


def _group_norm(channels: int) -> nn.Module:
    """Up to 32 groups (Wu & He 2018), always a divisor of ``channels``."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


NORMS: Registry[Callable[[int], nn.Module]] = Registry("norm", key="model.norm")
NORMS.add("batch", nn.BatchNorm2d)
NORMS.add("group", _group_norm)
NORMS.add("instance", lambda c: nn.InstanceNorm2d(c, affine=True))
NORMS.add("none", lambda c: nn.Identity())

POOLING: Registry[Callable[[int], nn.Module]] = Registry("pooling", key="model.pooling")
POOLING.add("max", lambda c: nn.MaxPool2d(2))
POOLING.add("avg", lambda c: nn.AvgPool2d(2))
POOLING.add("conv", lambda c: nn.Conv2d(c, c, kernel_size=2, stride=2))


def init_like_torchvision(module: nn.Module) -> None:
    """The initialisation torchvision's VGG and ResNet apply to their convs and norms."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.reset_parameters()


class ConvBlock(nn.Sequential):
    """``n`` × (3×3 conv → norm → activation), then optional 2-D dropout."""

    def __init__(self, in_ch: int, out_ch: int, n: int = 2, activation: str = "relu", norm: str = "batch",
                 dropout: float = 0.0) -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [
                nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=norm == "none"),
                NORMS.get(norm)(out_ch),
                ACTIVATIONS.get(activation)(),
            ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Up(nn.Module):
    """Doubles the spatial size and maps ``in_ch`` to ``out_ch`` channels.

    ``indices`` and ``size`` (the skip's H×W) are used only by max-unpooling.
    """

    def forward(self, x: torch.Tensor, indices: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        raise NotImplementedError


class TransposeUp(Up):
    """Learned 2×2 transposed convolution, stride 2 (the original U-Net up-conv)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)

    def forward(self, x, indices=None, size=None):
        return self.up(x)


class InterpolateUp(Up):
    """Fixed interpolation followed by a 1×1 conv; avoids transposed-conv checkerboard artefacts."""

    def __init__(self, in_ch: int, out_ch: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x, indices=None, size=None):
        align = False if self.mode == "bilinear" else None
        return self.conv(F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=align))


class PixelShuffleUp(Up):
    """1×1 conv to ``4·out_ch`` channels, then sub-pixel shuffle (Shi et al. 2016)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch * 4, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x, indices=None, size=None):
        return self.shuffle(self.conv(x))


class MaxUnpoolUp(Up):
    """1×1 conv to the skip's channels, then MaxUnpool2d with the encoder's pooling indices (SegNet)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)
        self.unpool = nn.MaxUnpool2d(2)

    def forward(self, x, indices=None, size=None):
        if indices is None:
            raise RuntimeError("maxunpool needs the encoder's max-pooling indices")
        return self.unpool(self.conv(x), indices, output_size=size)


UNPOOLING: Registry[Callable[[int, int], Up]] = Registry("unpooling", key="model.unpooling")
UNPOOLING.add("transpose", TransposeUp)
UNPOOLING.add("bilinear", lambda i, o: InterpolateUp(i, o, "bilinear"))
UNPOOLING.add("nearest", lambda i, o: InterpolateUp(i, o, "nearest"))
UNPOOLING.add("pixelshuffle", PixelShuffleUp)
UNPOOLING.add("maxunpool", MaxUnpoolUp)


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018, "Attention U-Net").

    The gating signal is the up-sampled decoder feature at the skip's resolution; the gate
    returns the skip scaled by a per-pixel coefficient in (0, 1).
    """

    def __init__(self, skip_ch: int, gate_ch: int, norm: str = "batch") -> None:
        super().__init__()
        inter = max(skip_ch // 2, 1)
        self.w_skip = nn.Sequential(nn.Conv2d(skip_ch, inter, 1, bias=False), NORMS.get(norm)(inter))
        self.w_gate = nn.Sequential(nn.Conv2d(gate_ch, inter, 1, bias=False), NORMS.get(norm)(inter))
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(F.relu(self.w_skip(skip) + self.w_gate(gate)))


class Encoder(nn.Module):
    """Base of every backbone: maps an image to ``depth + 1`` feature maps, finest first.

    ``features[k]`` has ``out_channels[k]`` channels at 1/2^k of the (padded) input size;
    ``indices[k]`` holds the max-pooling indices between level k and k+1 (``None`` where the
    encoder does not max-pool). ``decoder_channels[k]`` is the decoder's width at level k.
    ``stem_key`` names the first conv's weight (adapted when loading weights for a different
    number of input channels); ``foreign_keys`` are torchvision state-dict keys the encoder
    does not use (classifier, fc, layers cut off by ``depth``) and that loading may ignore.
    """

    def __init__(self, name: str, torchvision_name: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.torchvision_name = torchvision_name
        self.out_channels: list[int] = []
        self.decoder_channels: list[int] = []
        self.stem_key: str | None = None
        self.foreign_keys: frozenset[str] = frozenset()

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        raise NotImplementedError


def pool(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply a down-sampling module, splitting off max-pooling indices when it returns them."""
    out = module(x)
    return out if isinstance(out, tuple) else (out, None)
