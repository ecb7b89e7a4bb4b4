"""Quality per second: unet-dist's defaults vs segmentation-models-pytorch at an equal training-time budget.

Both sides train on the real ISBI 2012 membrane set (``../shared/data/isbi2012-membrane``) with the same
seeded 24 train / 6 val split, 256² random crops, 2 CPU threads in total, and a budget of training time that
excludes evaluation; both evaluate the 6 validation images whole (512²) after every epoch and keep their best.

- **unet-dist**: ``fit(cfg)`` with the package's defaults plus ``train.time_budget_s`` (Ray Train, 2 workers ×
  1 thread on a local Ray, checkpoints, the LR schedule following the budget), read back from ``metrics.jsonl``.
- **peer**: what a new user writes with segmentation-models-pytorch: ``smp.Unet("resnet18", encoder_weights=None)``,
  batch 8, Adam 1e-3, BCE + Dice, random crops and flips, one process × 2 threads, the same budget clock.

Reported per side and budget: best val mean IoU (over both classes) and foreground IoU (mean of seeds), training
images/s and validation images/s (medians), and the ratios. Seeds and budgets interleave, so drift on the machine
hits both sides alike. Needs ``segmentation-models-pytorch`` (``make bench`` installs it; ``make demo`` never does).

    python bench/quality.py [--budgets 60 180] [--seeds 0 1 2] [--set model.base_filters=16 ...] [--skip-peer]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_dist.config import IngestConfig, load_config  # noqa: E402
from unet_dist.data.codec import decode_image, decode_mask  # noqa: E402
from unet_dist.data.ingest import ingest  # noqa: E402
from unet_dist.runs import RunDir  # noqa: E402
from unet_dist.storage import resolve  # noqa: E402
from unet_dist.inference.metrics import confusion_matrix, scores  # noqa: E402

ISBI = REPO.parent / "shared" / "data" / "isbi2012-membrane"
THREADS = 2
CROP = 256


def write_split(src: Path, dest: Path, seed: int = 0, n_val: int = 6) -> Path:
    """A CSV manifest with a seeded train/val split of every pair (both sides read the same one)."""
    names = sorted(p.name for p in (src / "images").iterdir())
    random.Random(seed).shuffle(names)
    path = dest / "split.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask", "split"])
        for i, name in enumerate(names):
            w.writerow([str(src / "images" / name), str(src / "masks" / name), "val" if i < n_val else "train"])
    return path


def read_split(path: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """``{"train": [(image uint8 H×W, labels 0/1 H×W)], "val": [...]}`` from the split CSV."""
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "val": []}
    with path.open() as f:
        for row in csv.DictReader(f):
            image = decode_image(row["image"])
            image = image[..., 0] if image.ndim == 3 else image
            out[row["split"]].append((image, (decode_mask(row["mask"]) > 0).astype(np.int64)))
    return out


# --- the peer: a new user's segmentation-models-pytorch loop ------------------------------------------------

def peer_run(split: dict[str, list[tuple[np.ndarray, np.ndarray]]], budget: float, seed: int) -> dict[str, Any]:
    import segmentation_models_pytorch as smp

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pixels = np.concatenate([im.ravel() for im, _ in split["train"]]).astype(np.float32) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    norm = lambda im: (im.astype(np.float32) / 255.0 - mean) / std  # noqa: E731
    train = [(norm(im), m) for im, m in split["train"]]
    val = [(torch.from_numpy(norm(im))[None, None], torch.from_numpy(m)[None]) for im, m in split["val"]]
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bce, dice = torch.nn.BCEWithLogitsLoss(), smp.losses.DiceLoss("binary", from_logits=True)
    used, images, evals, val_times = 0.0, 0, [], []
    while used < budget:
        model.train()
        order = rng.permutation(len(train))
        t0 = time.perf_counter()
        for i in range(0, len(order), 8):
            if used + time.perf_counter() - t0 >= budget:
                break
            x, y = _peer_batch([train[j] for j in order[i:i + 8]], rng)
            logits = model(x)
            loss = bce(logits, y) + dice(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            images += len(x)
        used += time.perf_counter() - t0
        t1 = time.perf_counter()
        evals.append(_peer_eval(model, val))
        val_times.append(time.perf_counter() - t1)
    return _summary(evals, images / used, len(val) / statistics.median(val_times), used, len(evals))


def _peer_batch(items: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for im, m in items:
        top, left = rng.integers(0, im.shape[0] - CROP + 1), rng.integers(0, im.shape[1] - CROP + 1)
        x, y = im[top:top + CROP, left:left + CROP], m[top:top + CROP, left:left + CROP]
        if rng.random() < 0.5:
            x, y = x[:, ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            x, y = x[::-1], y[::-1]
        xs.append(np.ascontiguousarray(x)[None])
        ys.append(np.ascontiguousarray(y)[None].astype(np.float32))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


@torch.no_grad()
def _peer_eval(model: torch.nn.Module, val: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    model.eval()
    cm = torch.zeros(2, 2, dtype=torch.int64)
    for x, y in val:
        cm += confusion_matrix((model(x)[:, 0] > 0).long(), y, 2)
    s = scores(cm)
    return {"mean_iou": s["mean_iou"], "iou": s["iou"]}


def _summary(evals: list[dict[str, Any]], train_ips: float, val_ips: float, used: float, epochs: int) -> dict[str, Any]:
    best = max(evals, key=lambda e: e["mean_iou"])
    return {"best_val_mean_iou": best["mean_iou"], "best_val_iou": best["iou"], "train_images_per_s": train_ips,
            "val_images_per_s": val_ips, "train_time_s": used, "epochs": epochs}


# --- unet-dist: fit() on its defaults ------------------------------------------------------------------------

def ours_run(dataset: str, storage: Path, budget: float, seed: int, overrides: list[str]) -> dict[str, Any]:
    from unet_dist.train import fit

    name = f"b{int(budget)}-s{seed}-{time.time_ns()}"
    cfg = load_config(overrides=[f"data.dataset={dataset}", f"storage.uri={storage}", f"train.name={name}",
                                 "train.epochs=100000", f"train.time_budget_s={budget}", f"train.seed={seed}",
                                 "train.log_images=0", *overrides])
    fit(cfg, progress=False)
    rows = RunDir(resolve(storage) / name).metrics()
    shutil.rmtree(storage / name, ignore_errors=True)
    train_s = np.diff([0.0] + [r["train_time_s"] for r in rows])
    val_s = [r["epoch_time_s"] - t for r, t in zip(rows, train_s)]
    evals = [{"mean_iou": r["val_mean_iou"], "iou": r["val_iou"]} for r in rows]
    images = sum(r["train_images"] for r in rows)
    out = _summary(evals, images / rows[-1]["train_time_s"], rows[0]["val_images"] / statistics.median(val_s),
                   rows[-1]["train_time_s"], len(rows))
    out["first_epoch_images_per_s"] = rows[0]["images_per_s"]
    return out


# --- the run -------------------------------------------------------------------------------------------------

def aggregate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("best_val_mean_iou", "best_val_iou", "train_images_per_s", "val_images_per_s", "epochs")
    agg = {f"mean_{k}" if k.startswith("best") else f"median_{k}": (statistics.mean if k.startswith("best") else statistics.median)(
        [s[k] for s in samples]) for k in keys}
    return agg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[60.0, 180.0], help="training-time budgets in seconds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra unet-dist config overrides (k=v)")
    ap.add_argument("--skip-peer", action="store_true", help="only unet-dist (for exploring its settings)")
    ap.add_argument("--data", default=str(ISBI), help="an images/ + masks/ folder (default: ../shared's ISBI 2012)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "quality.json"))
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        sys.exit(f"data not found at {data}: pass --data FOLDER with images/ and masks/")
    import ray

    from unet_dist.session import quiet_ray_logs

    tmp = Path(tempfile.mkdtemp(prefix="unet-quality-"))
    try:
        split_csv = write_split(data, tmp)
        split = read_split(split_csv)
        manifest = ingest(str(split_csv), str(tmp / "dataset"), IngestConfig(split_column="split"), progress=False)
        ray.init(num_cpus=THREADS, include_dashboard=True, logging_level="ERROR", log_to_driver=False)
        quiet_ray_logs()
        samples: list[dict[str, Any]] = []
        for budget in args.budgets:
            for seed in args.seeds:
                sides = [("unet-dist", lambda: ours_run(manifest["uri"], tmp / "runs", budget, seed, args.overrides))]
                if not args.skip_peer:
                    sides.append(("smp", lambda: peer_run(split, budget, seed)))
                for side, run in (sides if seed % 2 == 0 else sides[::-1]):
                    t0 = time.perf_counter()
                    result = {"side": side, "budget_s": budget, "seed": seed, **run(), "wall_s": time.perf_counter() - t0}
                    samples.append(result)
                    print(json.dumps(result), flush=True)
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, samples)


def report(args: argparse.Namespace, samples: list[dict[str, Any]]) -> None:
    table = []
    for budget in args.budgets:
        sides = {s: aggregate([x for x in samples if x["side"] == s and x["budget_s"] == budget]) for s in ("unet-dist", "smp")
                 if any(x["side"] == s and x["budget_s"] == budget for x in samples)}
        row: dict[str, Any] = {"budget_s": budget, **{side: agg for side, agg in sides.items()}}
        if len(sides) == 2:
            a, b = sides["unet-dist"], sides["smp"]
            row["ratio_mean_iou"] = a["mean_best_val_mean_iou"] / b["mean_best_val_mean_iou"]
            row["ratio_fg_iou"] = a["mean_best_val_iou"] / b["mean_best_val_iou"]
            row["ratio_train_images_per_s"] = a["median_train_images_per_s"] / b["median_train_images_per_s"]
            row["ratio_val_images_per_s"] = a["median_val_images_per_s"] / b["median_val_images_per_s"]
        table.append(row)
    doc = {
        "benchmark": "quality", "command": "python bench/quality.py " + " ".join(sys.argv[1:]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, **_versions()},
        "threads": THREADS, "crop": CROP, "overrides": args.overrides, "summary": table, "samples": samples,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(table))


def _versions() -> dict[str, str]:
    import ray

    out = {"ray": ray.__version__}
    try:
        import segmentation_models_pytorch as smp

        out["segmentation_models_pytorch"] = smp.__version__
    except ImportError:
        pass
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| budget | side | best val mean IoU (mean of seeds) | best fg IoU | train img/s | val img/s (512²) | epochs |",
             "|---|---|---|---|---|---|---|"]
    for row in table:
        for side in ("unet-dist", "smp"):
            if side in row:
                a = row[side]
                lines.append(f"| {row['budget_s']:.0f} s | {side} | {a['mean_best_val_mean_iou']:.4f} | {a['mean_best_val_iou']:.4f} | "
                             f"{a['median_train_images_per_s']:.2f} | {a['median_val_images_per_s']:.2f} | {a['median_epochs']:.0f} |")
        if "ratio_mean_iou" in row:
            lines.append(f"| {row['budget_s']:.0f} s | **ratio** | **{row['ratio_mean_iou']:.3f}** | {row['ratio_fg_iou']:.3f} | "
                         f"{row['ratio_train_images_per_s']:.2f} | {row['ratio_val_images_per_s']:.2f} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
