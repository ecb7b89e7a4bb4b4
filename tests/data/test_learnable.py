"""The synthetic set is learnable: a small U-Net reaches val IoU >= 0.8 in a few epochs (slow)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from unet_dist.config import DataConfig, ModelConfig
from unet_dist.data import read_manifest, split_paths
from unet_dist.data.pipeline import augment, collate_whole, crop_seed, decode_row, pipeline_spec
from unet_dist.data.synthetic import demo_dataset
from unet_dist.inference.metrics import confusion_matrix, predict_labels, scores


@pytest.mark.slow
def test_small_unet_learns_synthetic(tmp_path):
    from unet_dist.models import create_unet

    torch.manual_seed(0)
    uri = demo_dataset(str(tmp_path), n=32, size=96)
    manifest = read_manifest(uri)
    spec = pipeline_spec(DataConfig(dataset=uri, crop_size=96), None, 1, manifest, pad_multiple=8)
    rows = {s: [r for p in split_paths(manifest, s)[0] for r in pq.read_table(p).to_pylist()] for s in ("train", "val")}
    model = create_unet(ModelConfig(depth=3, base_filters=16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for epoch in range(6):
        model.train()
        for i in range(0, len(rows["train"]), 4):
            pairs = [augment(*decode_row(r["image"], r["mask"], spec), spec, torch.Generator().manual_seed(crop_seed(epoch, r["id"])))
                     for r in rows["train"][i:i + 4]]
            x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y, ignore_index=-1).backward()
            opt.step()
    model.eval()
    batch = collate_whole([decode_row(r["image"], r["mask"], spec) for r in rows["val"]], spec.pad_multiple)
    with torch.no_grad():
        cm = confusion_matrix(predict_labels(model(batch["image"])), batch["mask"], 2)
    assert scores(cm)["per_class_iou"]["1"] >= 0.8
