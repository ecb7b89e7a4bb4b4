"""The scratch U-Net can fit a few real ISBI 2012 membrane images: the whole model learns."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unet_dist.config import ModelConfig
from unet_dist.models import create_unet
from unet_dist.inference.metrics import confusion_matrix, predict_labels, scores

SIZE, IMAGES, MAX_STEPS, TARGET_IOU = 128, 4, 300, 0.9


def _load(isbi_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    names = sorted(p.name for p in (isbi_dir / "images").glob("*.png"))[:IMAGES]
    images = [np.asarray(Image.open(isbi_dir / "images" / n).convert("L").resize((SIZE, SIZE), Image.BILINEAR)) for n in names]
    masks = [np.asarray(Image.open(isbi_dir / "masks" / n).convert("L").resize((SIZE, SIZE), Image.NEAREST)) for n in names]
    x = torch.from_numpy(np.stack(images)).float().unsqueeze(1) / 255.0
    y = torch.from_numpy((np.stack(masks) == 255).astype(np.int64))
    return (x - x.mean()) / x.std(), y


def test_scratch_unet_overfits_isbi(isbi_dir: Path) -> None:
    x, y = _load(isbi_dir)
    torch.manual_seed(0)
    model = create_unet(ModelConfig(backbone="scratch", depth=3, base_filters=8))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start, iou, step = time.perf_counter(), 0.0, 0
    while step < MAX_STEPS and iou <= TARGET_IOU:
        model.train()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 10 == 0:
            with torch.no_grad():
                iou = scores(confusion_matrix(predict_labels(model.eval()(x)), y, 2))["iou"]
    print(f"\nscratch U-Net on {IMAGES} ISBI images at {SIZE}px: foreground IoU {iou:.3f} after {step} Adam steps, "
          f"{time.perf_counter() - start:.1f} s")
    assert iou > TARGET_IOU
