"""Segmentation metrics from confusion matrices.

Workers accumulate a ``C x C`` confusion matrix (rows = truth, columns = prediction) and all-reduce
it; IoU, Dice and accuracy are then computed once from the summed matrix. That is exact under DDP,
unlike an average of per-worker IoUs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def predict_labels(logits: torch.Tensor) -> torch.Tensor:
    """Class ids from logits: argmax for C > 1, ``logit > 0`` for a single-logit binary head."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> torch.Tensor:
    """``num_classes x num_classes`` int64 counts; pixels with target < 0 or == ignore_index are skipped."""
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    idx = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(cm: torch.Tensor, class_names: list[str] | None = None) -> dict[str, Any]:
    """Per-class IoU and Dice, mean IoU / Dice over classes present, pixel accuracy.

    A class absent from both truth and prediction has undefined IoU and is left out of the means.
    For two classes, ``iou`` is the foreground IoU (the number users quote for binary tasks).
    """
    cm = cm.double()
    tp = cm.diag()
    gt = cm.sum(1)
    pr = cm.sum(0)
    union = gt + pr - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    dice = torch.where(present, 2 * tp / (gt + pr).clamp(min=1), torch.full_like(tp, float("nan")))
    n = cm.shape[0]
    names = class_names if class_names and len(class_names) == n else [str(i) for i in range(n)]
    mean_iou = float(iou[present].mean()) if present.any() else 0.0
    mean_dice = float(dice[present].mean()) if present.any() else 0.0
    total = float(cm.sum())
    out: dict[str, Any] = {
        "mean_iou": mean_iou,
        "mean_dice": mean_dice,
        "pixel_acc": float(tp.sum() / total) if total else 0.0,
        "per_class_iou": {names[i]: (None if not present[i] else float(iou[i])) for i in range(n)},
        "per_class_dice": {names[i]: (None if not present[i] else float(dice[i])) for i in range(n)},
    }
    fg = float(iou[1]) if n == 2 and present[1] else mean_iou
    out["iou"] = fg
    out["dice"] = float(dice[1]) if n == 2 and present[1] else mean_dice
    return out


Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over the processes that share an epoch (in place): the DDP all-reduce in training."""


def no_reduce(t: torch.Tensor) -> torch.Tensor:
    """One process: the sums are already global."""
    return t


class EpochMeter:
    """Accumulates a confusion matrix, loss sum and pixel/image counts over one epoch on one worker.

    :meth:`compute` sums the integer matrix and the float64 sums with ``reduce`` (the all-reduce under DDP), so every
    rank returns the same, exact, global metrics.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None, reduce: Reduce = no_reduce) -> None:
        self.reduce = reduce
        self.k = max(2, num_classes)
        self.class_names = class_names
        self.cm = torch.zeros(self.k, self.k, dtype=torch.int64)
        self.sums = torch.zeros(3, dtype=torch.float64)  # loss * batch, batches' images, loss count

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float | None = None) -> None:
        pred = predict_labels(logits.detach().float()).cpu()
        self.cm += confusion_matrix(pred, target.cpu(), self.k)
        n = target.shape[0]
        self.sums[1] += n
        if loss is not None:
            self.sums[0] += float(loss) * n
            self.sums[2] += n

    def compute(self) -> dict[str, Any]:
        cm = self.reduce(self.cm.clone())
        sums = self.reduce(self.sums.clone())
        out = scores(cm, self.class_names)
        out["loss"] = float(sums[0] / sums[2]) if sums[2] > 0 else float("nan")
        out["images"] = int(sums[1])
        out["confusion_matrix"] = cm.tolist()
        return out
