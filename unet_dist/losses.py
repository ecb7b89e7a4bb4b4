"""Segmentation losses, in a registry: ``create_loss("dice_ce", num_classes=2)``.

Every loss takes raw logits ``N x C x H x W`` and int64 targets ``N x H x W`` where ``-1`` means
"ignore". A single-logit head (``C == 1``) is treated as two classes ``[1 - p, p]``, so each loss
works the same way for binary and multi-class heads.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unet_dist.errors import ConfigError
from unet_dist.registry import Registry

IGNORE = -1
LossBuilder = Callable[..., nn.Module]
LOSSES: Registry[LossBuilder] = Registry("loss", key="train.loss")
"""Builders ``fn(num_classes, weight) -> nn.Module``; its names are ``catalog.CHOICES["train.loss"]`` (tested)."""


def register_loss(name: str) -> Callable[[LossBuilder], LossBuilder]:
    """Add a loss builder ``fn(num_classes, weight) -> nn.Module`` under ``name``."""
    return LOSSES.register(name)


def list_losses() -> list[str]:
    return sorted(LOSSES)


def create_loss(name: str, num_classes: int, class_weights: Sequence[float] | None = None) -> nn.Module:
    """Build a registered loss; ``class_weights`` has one weight per class (2 for a single-logit head)."""
    build = LOSSES.get(name)
    k = max(2, num_classes)
    weight = None
    if class_weights is not None:
        if len(class_weights) != k:
            raise ConfigError(f"train.class_weights: expected {k} weights (one per class), got {len(class_weights)}")
        weight = torch.tensor(list(class_weights), dtype=torch.float32)
    return build(num_classes=num_classes, weight=weight)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Per-class log-probabilities ``N x K x H x W``, ``K = max(2, C)``."""
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return F.log_softmax(logits, dim=1)


def _valid_onehot(target: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    valid = (target >= 0) & (target < k)
    onehot = F.one_hot(target.clamp(0, k - 1), k).permute(0, 3, 1, 2).float()
    return onehot * valid.unsqueeze(1), valid


class _WeightedLoss(nn.Module):
    def __init__(self, num_classes: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_classes = max(2, num_classes)
        self.register_buffer("weight", weight, persistent=False)


class CrossEntropy(_WeightedLoss):
    """Pixel-wise cross entropy (the binary form for a single-logit head), mean over valid pixels."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lp = log_probs(logits.float())
        if not (target >= 0).any():
            return lp.sum() * 0.0
        return F.nll_loss(lp, target, weight=self.weight, ignore_index=IGNORE)


class BinaryCrossEntropy(_WeightedLoss):
    """Independent sigmoid BCE per class channel against one-hot targets (channel = foreground for C == 1)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if logits.shape[1] == 1:
            onehot, valid = _valid_onehot(target, 2)
            onehot = onehot[:, 1:]
            w = None if self.weight is None else torch.where(onehot > 0, self.weight[1], self.weight[0])
        else:
            onehot, valid = _valid_onehot(target, self.num_classes)
            w = None if self.weight is None else self.weight.view(1, -1, 1, 1).expand_as(onehot)
        per = F.binary_cross_entropy_with_logits(logits, onehot, weight=w, reduction="none")
        mask = valid.unsqueeze(1).float()
        return (per * mask).sum() / (mask.sum() * per.shape[1]).clamp(min=1)


class SoftDice(_WeightedLoss):
    """1 - soft Dice averaged over classes (class-weighted), computed over the whole batch."""

    jaccard = False

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = log_probs(logits.float()).exp()
        onehot, valid = _valid_onehot(target, self.num_classes)
        probs = probs * valid.unsqueeze(1)
        dims = (0, 2, 3)
        inter = (probs * onehot).sum(dims)
        total = probs.sum(dims) + onehot.sum(dims)
        eps = 1.0
        if self.jaccard:
            score = (inter + eps) / (total - inter + eps)
        else:
            score = (2 * inter + eps) / (total + eps)
        w = self.weight if self.weight is not None else torch.ones_like(score)
        return 1 - (score * w).sum() / w.sum()


class SoftJaccard(SoftDice):
    """1 - soft IoU (Jaccard) averaged over classes."""

    jaccard = True


class Focal(_WeightedLoss):
    """Focal loss (gamma = 2): cross entropy down-weighting easy pixels."""

    gamma = 2.0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        lp = log_probs(logits.float())
        valid = target >= 0
        if not valid.any():
            return lp.sum() * 0.0
        t = target.clamp(min=0).unsqueeze(1)
        lpt = lp.gather(1, t).squeeze(1)
        loss = -((1 - lpt.exp()) ** self.gamma) * lpt
        if self.weight is not None:
            loss = loss * self.weight[t.squeeze(1)]
        return loss[valid].mean()


class DiceCE(nn.Module):
    """Cross entropy + soft Dice: CE for pixel accuracy, Dice for small structures."""

    def __init__(self, num_classes: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ce = CrossEntropy(num_classes, weight)
        self.dice = SoftDice(num_classes, weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ce(logits, target) + self.dice(logits, target)


register_loss("ce")(CrossEntropy)
register_loss("bce")(BinaryCrossEntropy)
register_loss("dice")(SoftDice)
register_loss("jaccard")(SoftJaccard)
register_loss("focal")(Focal)
register_loss("dice_ce")(DiceCE)


def remap_ignore(target: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Map a dataset-specific ignore label (``train.ignore_index``) to the internal ``-1``."""
    if ignore_index is None or ignore_index == IGNORE:
        return target
    return torch.where(target == ignore_index, torch.full_like(target, IGNORE), target)
