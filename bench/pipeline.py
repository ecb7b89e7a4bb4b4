"""Does the input pipeline keep up with training? Images/s delivered vs images/s consumed, at one CPU each.

Delivered: worker-side decode + normalise + augment (256-px crops) from an ingested dataset, i.e. what
``iter_train_batches`` does in each training worker. Consumed: forward + backward + optimizer step of the
default model (``create_unet(ModelConfig())``) on batches of the same shape. Both run with
``torch.set_num_threads(1)``, the share of a 1-CPU worker. Writes medians over repeats to
``bench/results/pipeline.json``.

    python bench/pipeline.py [--data ISBI_DIR] [--repeats 5] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_dist.config import DataConfig, IngestConfig, ModelConfig  # noqa: E402
from unet_dist.data.ingest import ingest  # noqa: E402
from unet_dist.data.manifest import read_manifest, split_paths  # noqa: E402
from unet_dist.data.pipeline import augment, crop_seed, decode_row, pipeline_spec  # noqa: E402
from unet_dist.data.synthetic import demo_dataset  # noqa: E402


def _rows(manifest: dict) -> list[dict]:
    paths, fs = split_paths(manifest, "train")
    return [r for p in paths for r in pq.read_table(p, filesystem=fs, columns=["id", "image", "mask"]).to_pylist()]


def delivered(rows: list[dict], spec, n_images: int) -> float:
    """Images/s through decode + normalise + augment for ``n_images`` crops."""
    t0 = time.perf_counter()
    for i in range(n_images):
        row = rows[i % len(rows)]
        x, y = decode_row(row["image"], row["mask"], spec)
        augment(x, y, spec, torch.Generator().manual_seed(crop_seed(i, row["id"])))
    return n_images / (time.perf_counter() - t0)


def consumed(model: torch.nn.Module, batch: int, crop: int, in_channels: int, num_classes: int, steps: int) -> float:
    """Images/s through forward + backward + AdamW step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, in_channels, crop, crop)
    y = torch.randint(0, num_classes, (batch, crop, crop))
    model.train()
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1)
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "isbi2012-membrane"),
                    help="folder with images/ and masks/ (default: shared ISBI; synthetic if missing)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--pipeline-images", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "pipeline.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from unet_dist.models import create_unet

    with tempfile.TemporaryDirectory() as tmp:
        if (Path(args.data) / "images").is_dir():
            uri, source = str(Path(tmp) / "ds"), f"ISBI 2012 ({args.data})"
            ingest(args.data, uri, IngestConfig(), progress=False)
        else:
            uri, source = demo_dataset(tmp, n=32, size=512), "synthetic 32 x 512^2"
        manifest = read_manifest(uri)
        model_cfg = ModelConfig()
        data_cfg = DataConfig(dataset=uri, crop_size=args.crop, batch_size=args.batch)
        spec = pipeline_spec(data_cfg, None, model_cfg.in_channels, manifest)
        rows = _rows(manifest)
        model = create_unet(model_cfg)
        pipe = [delivered(rows, spec, args.pipeline_images) for _ in range(args.repeats)]
        train = [consumed(model, args.batch, args.crop, model_cfg.in_channels, model_cfg.num_classes, args.train_steps)
                 for _ in range(args.repeats)]
    import ray

    result = {
        "benchmark": "pipeline images/s delivered vs training images/s consumed (1 torch thread each)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": __import__("os").cpu_count(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "ray": ray.__version__},
        "data": source,
        "crop": args.crop, "batch": args.batch, "model": model_cfg.model_dump(mode="json"),
        "pipeline_images_per_s": {"median": statistics.median(pipe), "runs": pipe},
        "train_images_per_s": {"median": statistics.median(train), "runs": train},
        "ratio": statistics.median(pipe) / statistics.median(train),
        "goal_ratio": 3.0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"pipeline {result['pipeline_images_per_s']['median']:.1f} img/s, train {result['train_images_per_s']['median']:.2f} img/s, "
          f"ratio {result['ratio']:.1f} (goal >= 3) -> {args.out}")


if __name__ == "__main__":
    main()
