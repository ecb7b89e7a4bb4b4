"""ASHA vs full-budget FIFO: the same campaign space on the real ISBI 2012 data, side by side in one run.

Both campaigns run through :func:`unet_dist.tune.run_campaign` on one local Ray (2 CPUs): the same grid over
backbone x unpooling x learning rate, the same base config, the same trial resources. Compute is the number of
epochs trained, counted from every trial's ``metrics.jsonl`` on storage (so the epochs an ASHA-stopped trial
trains before its teardown count too). Reported: best val mean IoU of each campaign, the ratio ASHA/FIFO
(goal >= 0.99) and the compute ratio (goal <= 1/3).

    python bench/asha.py [--epochs 8] [--size 256] [--out bench/results/asha.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_dist.config import IngestConfig, load_config  # noqa: E402
from unet_dist.data.ingest import ingest  # noqa: E402
from unet_dist.runs import CampaignDir  # noqa: E402
from unet_dist.storage import resolve  # noqa: E402

ISBI = REPO.parent / "shared" / "data" / "isbi2012-membrane"
SPACE = {
    "model.backbone": {"grid": ["scratch", "resnet18"]},
    "model.unpooling": {"grid": ["transpose", "bilinear", "nearest"]},
    "train.lr": {"grid": [0.001, 0.004]},
}


def downscale(src: Path, dest: Path, size: int) -> Path:
    """ISBI at ``size``² (area for images, nearest for masks), so a 2-core run stays in minutes."""
    from PIL import Image

    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
    for path in sorted((src / "images").glob("*.png")):
        Image.open(path).resize((size, size), Image.BOX).save(dest / "images" / path.name)
        Image.open(src / "masks" / path.name).resize((size, size), Image.NEAREST).save(dest / "masks" / path.name)
    return dest


def campaign(dataset: str, storage: Path, scheduler: str, args: argparse.Namespace) -> dict[str, Any]:
    from unet_dist.tune import run_campaign

    cfg = load_config(None, [
        f"data.dataset={dataset}", f"storage.uri={storage}", f"data.crop_size={args.size // 2}", f"train.epochs={args.epochs}",
        "train.log_images=0", "train.num_to_keep=1", "resources.num_workers=1", "resources.cpus_per_worker=0.9",
        "resources.torch_threads=1", "resources.use_gpu=false", f"tune.name={scheduler}", f"tune.scheduler={scheduler}",
        "tune.num_samples=1", "tune.max_concurrent_trials=2", "tune.grace_period=1", "tune.reduction_factor=3",
    ], base={"tune": {"search_space": SPACE}})
    t0 = time.perf_counter()
    summary = run_campaign(cfg, progress=False)
    wall = time.perf_counter() - t0
    trials = CampaignDir(resolve(summary.uri)).trials()
    epochs = {tid: len(run.metrics()) for tid, run in trials.items()}
    best = summary.best or {}
    return {"scheduler": scheduler, "best_val_mean_iou": best.get("best_value"), "best_val_iou": best.get("best_val_iou"),
            "best_params": best.get("params"), "epochs_trained": sum(epochs.values()), "trials": len(trials),
            "counts": summary.counts, "wall_s": wall, "per_trial_epochs": epochs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8, help="epochs per trial (FIFO trains every trial this long)")
    ap.add_argument("--size", type=int, default=256, help="ISBI downscaled to this side; crops are half of it")
    ap.add_argument("--data", default=str(ISBI))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "asha.json"))
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="unet-asha-"))
    try:
        folder = downscale(Path(args.data), tmp / "raw", args.size)
        manifest = ingest(str(folder), str(tmp / "dataset"), IngestConfig(split=(0.8, 0.2, 0.0), seed=0), progress=False)
        ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False)
        results = []
        for scheduler in ("asha", "fifo"):
            results.append(campaign(manifest["uri"], tmp / "runs", scheduler, args))
            print(json.dumps(results[-1]), flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    asha, fifo = results
    summary = {"iou_ratio": asha["best_val_mean_iou"] / fifo["best_val_mean_iou"],
               "compute_ratio": asha["epochs_trained"] / fifo["epochs_trained"],
               "wall_ratio": asha["wall_s"] / fifo["wall_s"]}
    import torch

    doc = {"benchmark": "asha", "command": "python bench/asha.py " + " ".join(sys.argv[1:]),
           "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
           "versions": {"torch": torch.__version__, "ray": ray.__version__}, "space": SPACE, "epochs": args.epochs,
           "size": args.size, "summary": summary, "campaigns": results}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print("| campaign | best val mean IoU | epochs trained | trials (status) | wall s |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scheduler']} | {r['best_val_mean_iou']:.4f} | {r['epochs_trained']} | {r['trials']} {r['counts']} | {r['wall_s']:.0f} |")
    print(f"| **ASHA / FIFO** | **{summary['iou_ratio']:.3f}** | **{summary['compute_ratio']:.2f}** | | {summary['wall_ratio']:.2f} |")


if __name__ == "__main__":
    main()
