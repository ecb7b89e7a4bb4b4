"""Metrics from confusion matrices all-reduced over a real 2-process gloo group (the ``reduce`` the training loop
gives :class:`EpochMeter`) equal single-process metrics; per-image scores equal a NumPy reference."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unet_dist.inference.metrics import EpochMeter
from unet_dist.train.collectives import all_reduce_sum


def _data(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(5, num_classes, 16, 16, generator=g)
    target = torch.randint(0, max(2, num_classes), (5, 16, 16), generator=g)
    target[:, :2] = -1
    return logits, target


def _worker(rank: int, world: int, port: int, class_counts: list[int], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for num_classes in class_counts:  # one process group for every case: a spawn costs seconds, a case does not
            logits, target = _data(num_classes)
            meter = EpochMeter(num_classes, None, all_reduce_sum)
            for i in range(rank, logits.shape[0], world):  # uneven shards: 3 and 2 images
                meter.update(logits[i : i + 1], target[i : i + 1], loss=float(i))
            result = meter.compute()
            with open(f"{out}{num_classes}.{rank}", "w") as f:
                json.dump(result, f)
            for batch in (1, 2):  # the per-image scores of the mixed-size set, in two batch sizes
                with open(f"{out}{num_classes}.mixed{batch}.{rank}", "w") as f:
                    json.dump(_mixed_meter(num_classes, batch, rank, world, all_reduce_sum).compute(), f)
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLASS_COUNTS = [1, 2, 4]


def test_all_reduced_metrics_equal_single_process(tmp_path) -> None:
    """Pooled and per-image metrics of a 2-process group equal one process's; per-image ones equal a NumPy
    reference on a mixed-size set for 1 and 2 workers and two batch sizes each; binary, 2 and 4 classes."""
    out = str(tmp_path / "m")
    mp.spawn(_worker, args=(2, _port(), CLASS_COUNTS, out), nprocs=2, join=True)
    for num_classes in CLASS_COUNTS:
        logits, target = _data(num_classes)
        single = EpochMeter(num_classes, None)
        for i in range(logits.shape[0]):
            single.update(logits[i : i + 1], target[i : i + 1], loss=float(i))
        expected = json.loads(json.dumps(single.compute()))
        for rank in range(2):
            got = json.loads(open(f"{out}{num_classes}.{rank}").read())
            assert got["confusion_matrix"] == expected["confusion_matrix"], num_classes
            assert got["iou"] == expected["iou"] and got["mean_iou"] == expected["mean_iou"], num_classes
            assert got["per_class_iou"] == expected["per_class_iou"] and got["dice"] == expected["dice"], num_classes
            assert got["loss"] == pytest.approx(expected["loss"], rel=1e-12) and got["images"] == 5
            for key in ("image_iou", "image_dice", "image_mean_iou", "image_mean_dice"):
                assert got[key] == pytest.approx(expected[key], abs=1e-12), (num_classes, key)
        check_per_image_scores(f"{out}{num_classes}", num_classes)


# --- per-image scores: a NumPy reference, image by image, on a mixed-size set

SIZES = [(16, 16), (12, 20), (20, 9), (7, 7), (18, 14), (10, 12)]
PAD = 20


def _mixed(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Six images of six sizes padded to 20 x 20 (target -1 outside each image, as the val pipeline pads), a few
    pixels ignored; image 3 has no foreground in its mask or its prediction."""
    g = torch.Generator().manual_seed(100 + num_classes)
    k = max(2, num_classes)
    logits = torch.randn(len(SIZES), num_classes, PAD, PAD, generator=g)
    target = torch.full((len(SIZES), PAD, PAD), -1, dtype=torch.int64)
    for i, (h, w) in enumerate(SIZES):
        target[i, :h, :w] = torch.randint(0, k, (h, w), generator=g)
    target[0, 0, :5] = -1
    target[3] = torch.where(target[3] >= 0, 0, -1)
    if num_classes == 1:
        logits[3] = -5.0
    else:
        logits[3, 0] = 5.0
    return logits, target


def _numpy_reference(logits: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Each image's IoU and Dice per class from its own pixels, then means over images (a class absent from an
    image's mask and prediction left out), written with NumPy only."""
    import numpy as np

    lg, tg = logits.numpy(), target.numpy()
    k = max(2, lg.shape[1])
    pred = (lg[:, 0] > 0).astype(np.int64) if lg.shape[1] == 1 else lg.argmax(1)
    per_class: dict[int, list[tuple[float, float]]] = {c: [] for c in range(k)}
    means = []
    for i in range(len(tg)):
        valid = tg[i] >= 0
        t, p = tg[i][valid], pred[i][valid]
        scores = {}
        for c in range(k):
            inter, gt, pr = np.sum((t == c) & (p == c)), np.sum(t == c), np.sum(p == c)
            if gt + pr - inter > 0:
                scores[c] = (inter / (gt + pr - inter), 2 * inter / (gt + pr))
                per_class[c].append(scores[c])
        means.append((np.mean([s[0] for s in scores.values()]), np.mean([s[1] for s in scores.values()])))
    ref = {"image_mean_iou": float(np.mean([m[0] for m in means])), "image_mean_dice": float(np.mean([m[1] for m in means]))}
    if k == 2:
        ref["image_iou"] = float(np.mean([s[0] for s in per_class[1]]))
        ref["image_dice"] = float(np.mean([s[1] for s in per_class[1]]))
    else:
        ref["image_iou"], ref["image_dice"] = ref["image_mean_iou"], ref["image_mean_dice"]
    ref["per_class"] = [float(np.mean([s[0] for s in per_class[c]])) if per_class[c] else None for c in range(k)]
    return ref


def _mixed_meter(num_classes: int, batch: int, rank: int, world: int, reduce=None) -> EpochMeter:
    """This rank's images (every ``world``-th, as the val pipeline shards them) in batches of ``batch``."""
    logits, target = _mixed(num_classes)
    mine = list(range(rank, len(SIZES), world))
    meter = EpochMeter(num_classes, None, reduce) if reduce else EpochMeter(num_classes, None)
    for start in range(0, len(mine), batch):
        idx = mine[start:start + batch]
        meter.update(logits[idx], target[idx])
    return meter


def check_per_image_scores(out: str, num_classes: int) -> None:
    """The mixed-size set's per-image scores from 1 process (batches of 1 and 4) and from the 2-process group
    (batches of 1 and 2) equal the NumPy reference."""
    ref = _numpy_reference(*_mixed(num_classes))
    results = {(1, b): _mixed_meter(num_classes, b, 0, 1).compute() for b in (1, 4)}
    for b in (1, 2):
        results[(2, b)] = json.loads(open(f"{out}.mixed{b}.0").read())
        assert json.loads(open(f"{out}.mixed{b}.1").read()) == results[(2, b)], "every rank holds the same global scores"
    for (world, b), got in results.items():
        for key in ("image_iou", "image_dice", "image_mean_iou", "image_mean_dice"):
            assert got[key] == pytest.approx(ref[key], abs=1e-12), (world, b, key)
        assert [got["per_class_image_iou"][str(c)] for c in range(len(ref["per_class"]))] == pytest.approx(ref["per_class"], abs=1e-12)
    if num_classes <= 2:  # image 3 (no foreground anywhere) is left out of the foreground mean, not scored 0 or 1
        assert results[(1, 1)]["image_iou"] != pytest.approx(results[(1, 1)]["image_mean_iou"])
