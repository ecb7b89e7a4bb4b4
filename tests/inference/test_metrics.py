"""Metrics from confusion matrices all-reduced over a real 2-process gloo group (the ``reduce`` the training loop
gives :class:`EpochMeter`) equal single-process metrics."""

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


def _worker(rank: int, world: int, port: int, num_classes: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        logits, target = _data(num_classes)
        meter = EpochMeter(num_classes, None, all_reduce_sum)
        for i in range(rank, logits.shape[0], world):  # uneven shards: 3 and 2 images
            meter.update(logits[i : i + 1], target[i : i + 1], loss=float(i))
        result = meter.compute()
        with open(f"{out}.{rank}", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_all_reduced_metrics_equal_single_process(tmp_path, num_classes: int) -> None:
    out = str(tmp_path / "m")
    mp.spawn(_worker, args=(2, _port(), num_classes, out), nprocs=2, join=True)
    logits, target = _data(num_classes)
    single = EpochMeter(num_classes, None)
    for i in range(logits.shape[0]):
        single.update(logits[i : i + 1], target[i : i + 1], loss=float(i))
    expected = json.loads(json.dumps(single.compute()))
    for rank in range(2):
        got = json.loads(open(f"{out}.{rank}").read())
        assert got["confusion_matrix"] == expected["confusion_matrix"]
        assert got["iou"] == expected["iou"] and got["mean_iou"] == expected["mean_iou"]
        assert got["per_class_iou"] == expected["per_class_iou"] and got["dice"] == expected["dice"]
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-12) and got["images"] == 5
