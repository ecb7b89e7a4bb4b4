"""Segmentation metrics from confusion matrices, pooled and per image.

Workers accumulate a ``C x C`` confusion matrix (rows = truth, columns = prediction) and all-reduce
it; IoU, Dice and accuracy are then computed once from the summed matrix. That is exact under DDP,
unlike an average of per-worker IoUs.

Per-image scores (``image_iou``, ``image_mean_iou``, ``image_dice``, ``image_mean_dice``) are what nnU-Net and
the cell and nuclei challenges report: each image's IoU/Dice from its own confusion matrix, averaged over images,
so a few large images cannot decide the number. A class absent from both an image's mask and its prediction has
no IoU there and is left out of that class's mean over images (nnU-Net's rule); an image's mean over classes is
over the classes present in it. Workers sum per-class score sums and counts (float64) and all-reduce them, so
the result does not depend on the worker count or batch size.
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


def image_confusion(pred: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """``N x k x k`` int64: each image's :func:`confusion_matrix` in one pass (their sum is the batch's)."""
    n = target.shape[0]
    t = target.reshape(n, -1).long()
    p = pred.reshape(n, -1).long().clamp(0, k - 1)
    keep = (t >= 0) & (t < k)
    idx = (torch.arange(n).unsqueeze(1) * (k * k) + t * k + p)[keep]
    return torch.bincount(idx, minlength=n * k * k).reshape(n, k, k)


def image_score_sums(cms: torch.Tensor) -> torch.Tensor:
    """Sums over images (float64, length ``3k + 3``) from their ``N x k x k`` confusion matrices: per class the sum
    of its IoU and of its Dice over the images where it is present, and that count; then the sums of each image's
    mean IoU and mean Dice over its present classes, and the count of images with a valid pixel."""
    cms = cms.double()
    tp = cms.diagonal(dim1=1, dim2=2)
    gt, pr = cms.sum(2), cms.sum(1)
    union = gt + pr - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    dice = torch.where(present, 2 * tp / (gt + pr).clamp(min=1), torch.zeros_like(tp))
    has = present.any(1)
    classes = present.sum(1).clamp(min=1)
    return torch.cat([iou.sum(0), dice.sum(0), present.sum(0).double(),
                      torch.stack([(iou.sum(1) / classes).sum(), (dice.sum(1) / classes).sum(), has.sum().double()])])


def image_scores(sums: torch.Tensor, class_names: list[str] | None = None) -> dict[str, Any]:
    """Per-image means from :func:`image_score_sums` summed over every image. For two classes ``image_iou`` and
    ``image_dice`` are the foreground's (over the images where foreground is in the mask or the prediction);
    otherwise, and when no image has foreground, the means over classes."""
    k = (sums.shape[0] - 3) // 3
    iou_sum, dice_sum, count = sums[:k], sums[k:2 * k], sums[2 * k:3 * k]
    images = float(sums[3 * k + 2])
    mean_iou = float(sums[3 * k] / images) if images else 0.0
    mean_dice = float(sums[3 * k + 1] / images) if images else 0.0
    names = class_names if class_names and len(class_names) == k else [str(i) for i in range(k)]
    fg = k == 2 and count[1] > 0
    return {
        "image_iou": float(iou_sum[1] / count[1]) if fg else mean_iou,
        "image_dice": float(dice_sum[1] / count[1]) if fg else mean_dice,
        "image_mean_iou": mean_iou,
        "image_mean_dice": mean_dice,
        "per_class_image_iou": {names[c]: (float(iou_sum[c] / count[c]) if count[c] > 0 else None) for c in range(k)},
    }


Reduce = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over the processes that share an epoch (in place): the DDP all-reduce in training."""


def no_reduce(t: torch.Tensor) -> torch.Tensor:
    """One process: the sums are already global."""
    return t


class EpochMeter:
    """Accumulates a confusion matrix, per-image score sums, loss sum and pixel/image counts over one epoch on one
    worker.

    :meth:`compute` sums the integer matrix and the float64 sums with ``reduce`` (the all-reduce under DDP), so every
    rank returns the same, exact, global metrics.
    """

    def __init__(self, num_classes: int, class_names: list[str] | None = None, reduce: Reduce = no_reduce) -> None:
        self.reduce = reduce
        self.k = max(2, num_classes)
        self.class_names = class_names
        self.cm = torch.zeros(self.k, self.k, dtype=torch.int64)
        self.sums = torch.zeros(3, dtype=torch.float64)  # loss * batch, batches' images, loss count
        self.image_sums = torch.zeros(3 * self.k + 3, dtype=torch.float64)

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float | None = None) -> torch.Tensor:
        """Add a batch; returns its images' ``N x k x k`` confusion matrices (one bincount serves both sums)."""
        pred = predict_labels(logits.detach().float()).cpu()
        cms = image_confusion(pred, target.cpu(), self.k)
        self.cm += cms.sum(0)
        self.image_sums += image_score_sums(cms)
        n = target.shape[0]
        self.sums[1] += n
        if loss is not None:
            self.sums[0] += float(loss) * n
            self.sums[2] += n
        return cms

    def compute(self) -> dict[str, Any]:
        cm = self.reduce(self.cm.clone())
        sums = self.reduce(self.sums.clone())
        out = {**scores(cm, self.class_names), **image_scores(self.reduce(self.image_sums.clone()), self.class_names)}
        out["loss"] = float(sums[0] / sums[2]) if sums[2] > 0 else float("nan")
        out["images"] = int(sums[1])
        out["confusion_matrix"] = cm.tolist()
        return out
