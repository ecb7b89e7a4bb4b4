"""Quality per second: unet-dist's defaults vs segmentation-models-pytorch at an equal training-time budget, on
two sets: the real ISBI 2012 membranes (uniform) and a heterogeneous synthetic nuclei set (mixed sizes and modalities).

- **isbi**: ``../shared/data/isbi2012-membrane``, the same seeded 24 train / 6 val split for both sides; 30 gray
  512² images, dense membranes.
- **hetero**: :func:`unet_dist.data.synthetic.generate_heterogeneous` (160 images, seed 0; the recipe is committed,
  never the data): 80 % small gray fluorescence images (96-144 px), 12 % RGB brightfield 256-320 px, 8 % 512-640 px,
  sparse nuclei (~3 % foreground). Split by unet-dist's stratified ingest (70/15/15), which both sides read.

Both sides use 2 CPU threads in total and a budget of training time that excludes evaluation, evaluate the val
images whole after every epoch and keep their best; on a set with a test split each side's kept model is then scored
on test.

- **unet-dist**: ``fit(cfg)`` with the package's defaults plus ``train.time_budget_s`` (Ray Train, 2 workers ×
  1 thread on a local Ray, checkpoints, the LR schedule following the budget), read back from ``metrics.jsonl``; its
  best checkpoint (``train.monitor``) is evaluated on test with ``unet_dist.inference.evaluate``.
- **peer**: what a new user writes with segmentation-models-pytorch: ``smp.Unet("resnet18", encoder_weights=None)``,
  batch 8, Adam 1e-3, BCE + Dice, random crops (256² on isbi; 128² on hetero, smaller images zero-padded) and
  flips, one process × 2 threads, the same budget clock; inputs standardised by the train set's mean/std on isbi and
  per image on hetero (as the nuclei peer of issue 21 did); it keeps the weights of its best per-image mean IoU.

Reported per set, side and budget (mean of seeds): each val metric's best over the run's validations (per-image
foreground IoU, per-image mean IoU over classes, and the pooled ones), the kept model's test scores, training and
validation images/s (medians), and the ratios. Per-image means leave out an image where a class is in neither mask
nor prediction (nnU-Net's rule). Seeds and budgets interleave, so drift on the machine hits both sides alike. Needs
``segmentation-models-pytorch`` (``make bench`` installs it; ``make demo`` never does).

    python bench/quality.py [--sets isbi hetero] [--budgets 60 180] [--seeds 0 1 2] [--set data.normalize=image ...]
        [--skip-peer]
"""

from __future__ import annotations

import argparse
import copy
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
from dataclasses import dataclass
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
from unet_dist.data.synthetic import generate_heterogeneous  # noqa: E402
from unet_dist.inference.evaluate import split_rows  # noqa: E402
from unet_dist.inference.metrics import image_confusion, image_score_sums, image_scores, scores  # noqa: E402
from unet_dist.runs import RunDir  # noqa: E402
from unet_dist.storage import resolve  # noqa: E402

ISBI = REPO.parent / "shared" / "data" / "isbi2012-membrane"
THREADS = 2
HETERO_N = 160
METRICS = ("image_iou", "image_mean_iou", "iou", "mean_iou")
Pairs = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class BenchSet:
    """One data set as both sides see it: the ingested dataset and its splits decoded for the peer."""

    name: str
    manifest: dict[str, Any]
    split: dict[str, Pairs]  # "train"/"val"(/"test"): (image float32 C x H x W, labels int64 H x W)
    peer_crop: int


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


def prepare(name: str, tmp: Path, isbi: Path) -> BenchSet:
    """Ingest one set the way a user would and decode its splits for the peer."""
    if name == "isbi":
        manifest = ingest(str(write_split(isbi, tmp)), str(tmp / "isbi"), IngestConfig(split_column="split"),
                          progress=False)
        return BenchSet(name, manifest, peer_split(manifest, per_image=False), peer_crop=256)
    src = generate_heterogeneous(str(tmp / "hetero-src"), n=HETERO_N, seed=0)
    manifest = ingest(src, str(tmp / "hetero"), IngestConfig(split=(0.7, 0.15, 0.15), seed=0), progress=False)
    return BenchSet(name, manifest, peer_split(manifest, per_image=True), peer_crop=128)


def peer_split(manifest: dict[str, Any], per_image: bool) -> dict[str, Pairs]:
    """The dataset's splits as float C x H x W images (gray repeated to the set's widest channel count) and labels,
    standardised per image or by the train split's pixels."""
    raw = {s: [(decode_image(im), decode_mask(m).astype(np.int64)) for _, im, m in split_rows(manifest, s)]
           for s in ("train", "val", "test") if (manifest["splits"].get(s) or {}).get("count")}
    channels = max(im.shape[2] if im.ndim == 3 else 1 for pairs in raw.values() for im, _ in pairs)
    out = {s: [(_chw(im, channels).astype(np.float32) / 255.0, m) for im, m in pairs] for s, pairs in raw.items()}
    if per_image:
        return {s: [((x - x.mean()) / max(float(x.std()), 1e-6), m) for x, m in pairs] for s, pairs in out.items()}
    pixels = np.concatenate([x.ravel() for x, _ in out["train"]])
    mean, std = float(pixels.mean()), float(pixels.std())
    return {s: [((x - mean) / std, m) for x, m in pairs] for s, pairs in out.items()}


def _chw(image: np.ndarray, channels: int) -> np.ndarray:
    """H x W (x C) -> C x H x W, a gray image repeated to ``channels``."""
    x = image.reshape(*image.shape[:2], -1).transpose(2, 0, 1)
    return np.repeat(x, channels // x.shape[0], 0)


# --- the peer: a new user's segmentation-models-pytorch loop ------------------------------------------------

def peer_run(bench: BenchSet, budget: float, seed: int) -> dict[str, Any]:
    import segmentation_models_pytorch as smp

    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train = bench.split["train"]
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=train[0][0].shape[0], classes=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bce, dice = torch.nn.BCEWithLogitsLoss(), smp.losses.DiceLoss("binary", from_logits=True)
    used, images, evals, val_times, kept = 0.0, 0, [], [], None
    while used < budget:
        model.train()
        order = rng.permutation(len(train))
        t0 = time.perf_counter()
        for i in range(0, len(order), 8):
            if used + time.perf_counter() - t0 >= budget:
                break
            x, y = _peer_batch([train[j] for j in order[i:i + 8]], bench.peer_crop, rng)
            logits = model(x)
            loss = bce(logits, y) + dice(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            images += len(x)
        used += time.perf_counter() - t0
        t1 = time.perf_counter()
        evals.append(_peer_eval(model, bench.split["val"]))
        val_times.append(time.perf_counter() - t1)
        if kept is None or evals[-1]["image_mean_iou"] > kept[0]:
            kept = (evals[-1]["image_mean_iou"], copy.deepcopy(model.state_dict()))
    out = _summary(evals, images / used, len(bench.split["val"]) / statistics.median(val_times), used)
    if "test" in bench.split:
        model.load_state_dict(kept[1])
        out["test"] = _peer_eval(model, bench.split["test"])
    return out


def _fit(x: np.ndarray, y: np.ndarray, crop: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random ``crop``² window; an image smaller than ``crop`` on a side is zero-padded (background) there."""
    ph, pw = max(crop - y.shape[0], 0), max(crop - y.shape[1], 0)
    if ph or pw:
        x, y = np.pad(x, ((0, 0), (0, ph), (0, pw))), np.pad(y, ((0, ph), (0, pw)))
    top, left = rng.integers(0, y.shape[0] - crop + 1), rng.integers(0, y.shape[1] - crop + 1)
    return x[:, top:top + crop, left:left + crop], y[top:top + crop, left:left + crop]


def _peer_batch(items: Pairs, crop: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for im, m in items:
        x, y = _fit(im, m, crop, rng)
        if rng.random() < 0.5:
            x, y = x[..., ::-1], y[:, ::-1]
        if rng.random() < 0.5:
            x, y = x[..., ::-1, :], y[::-1]
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y)[None].astype(np.float32))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


@torch.no_grad()
def _peer_eval(model: torch.nn.Module, pairs: Pairs) -> dict[str, Any]:
    """Whole images (padded to a multiple of 32 for the encoder, scored on their own pixels): pooled and per-image."""
    model.eval()
    cms = []
    for x, y in pairs:
        h, w = y.shape
        xp = np.pad(x, ((0, 0), (0, -h % 32), (0, -w % 32)))
        pred = (model(torch.from_numpy(xp)[None])[0, 0, :h, :w] > 0).long()
        cms.append(image_confusion(pred[None], torch.from_numpy(y)[None], 2))
    cm = torch.cat(cms)
    return _scores(cm.sum(0), image_score_sums(cm))


def _scores(cm: torch.Tensor, sums: torch.Tensor) -> dict[str, float]:
    pooled, per_image = scores(cm), image_scores(sums)
    return {"iou": pooled["iou"], "mean_iou": pooled["mean_iou"], "image_iou": per_image["image_iou"],
            "image_mean_iou": per_image["image_mean_iou"]}


def _summary(evals: list[dict[str, Any]], train_ips: float, val_ips: float, used: float) -> dict[str, Any]:
    """Each metric's best over the run's validations, as a monitor on that metric would keep it."""
    return {**{f"best_val_{m}": max(e[m] for e in evals) for m in METRICS}, "train_images_per_s": train_ips,
            "val_images_per_s": val_ips, "train_time_s": used, "epochs": len(evals)}


# --- unet-dist: fit() on its defaults ------------------------------------------------------------------------

def ours_run(bench: BenchSet, storage: Path, budget: float, seed: int, overrides: list[str]) -> dict[str, Any]:
    from unet_dist.inference.evaluate import evaluate
    from unet_dist.train import fit

    name = f"{bench.name}-b{int(budget)}-s{seed}-{time.time_ns()}"
    cfg = load_config(overrides=[f"data.dataset={bench.manifest['uri']}", f"storage.uri={storage}", f"train.name={name}",
                                 "train.epochs=100000", f"train.time_budget_s={budget}", f"train.seed={seed}",
                                 "train.log_images=0", *overrides])
    run = fit(cfg, progress=False)
    rows = RunDir(resolve(storage) / name).metrics()
    train_s = np.diff([0.0] + [r["train_time_s"] for r in rows])
    val_s = [r["epoch_time_s"] - t for r, t in zip(rows, train_s)]
    evals = [{m: r[f"val_{m}"] for m in METRICS} for r in rows]
    images = sum(r["train_images"] for r in rows)
    out = _summary(evals, images / rows[-1]["train_time_s"], rows[0]["val_images"] / statistics.median(val_s),
                   rows[-1]["train_time_s"])
    out["first_epoch_images_per_s"] = rows[0]["images_per_s"]
    if "test" in bench.split:
        test = evaluate(run.best_checkpoint, split="test", threads=THREADS)
        out["test"] = {m: test[m] for m in METRICS}
    shutil.rmtree(storage / name, ignore_errors=True)
    return out


# --- the run -------------------------------------------------------------------------------------------------

def aggregate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of seeds for quality, medians for speed."""
    agg = {f"mean_best_val_{m}": statistics.mean(s[f"best_val_{m}"] for s in samples) for m in METRICS}
    if all("test" in s for s in samples):
        agg.update({f"mean_test_{m}": statistics.mean(s["test"][m] for s in samples) for m in METRICS})
    agg.update({f"median_{k}": statistics.median(s[k] for s in samples)
                for k in ("train_images_per_s", "val_images_per_s", "epochs")})
    return agg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", choices=("isbi", "hetero"), default=["isbi", "hetero"], help="data sets to run")
    ap.add_argument("--budgets", type=float, nargs="+", default=[60.0, 180.0], help="training-time budgets in seconds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="extra unet-dist config overrides (k=v)")
    ap.add_argument("--skip-peer", action="store_true", help="only unet-dist (for exploring its settings)")
    ap.add_argument("--data", default=str(ISBI), help="the isbi set's images/ + masks/ folder (default: ../shared's ISBI 2012)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "quality.json"))
    args = ap.parse_args()
    if "isbi" in args.sets and not Path(args.data).is_dir():
        sys.exit(f"data not found at {args.data}: pass --data FOLDER with images/ and masks/, or --sets hetero")
    import ray

    from unet_dist.session import quiet_ray_logs

    tmp = Path(tempfile.mkdtemp(prefix="unet-quality-"))
    samples: list[dict[str, Any]] = []
    try:
        benches = [prepare(name, tmp, Path(args.data)) for name in args.sets]
        ray.init(num_cpus=THREADS, include_dashboard=True, logging_level="ERROR", log_to_driver=False)
        quiet_ray_logs()
        for bench in benches:
            for budget in args.budgets:
                for seed in args.seeds:
                    sides = [("unet-dist", lambda: ours_run(bench, tmp / "runs", budget, seed, args.overrides))]
                    if not args.skip_peer:
                        sides.append(("smp", lambda: peer_run(bench, budget, seed)))
                    for side, run in (sides if seed % 2 == 0 else sides[::-1]):
                        t0 = time.perf_counter()
                        result = {"set": bench.name, "side": side, "budget_s": budget, "seed": seed, **run(),
                                  "wall_s": time.perf_counter() - t0}
                        samples.append(result)
                        print(json.dumps(result), flush=True)
                        report(args, samples)  # after every sample, so a run cut short keeps what it measured
        ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(markdown(report(args, samples)))


def report(args: argparse.Namespace, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write the results file (summary per set, budget and side, every sample) and return the summary."""
    table = []
    for name in args.sets:
        for budget in args.budgets:
            sides = {s: aggregate(rows) for s in ("unet-dist", "smp")
                     if (rows := [x for x in samples if (x["set"], x["side"], x["budget_s"]) == (name, s, budget)])}
            row: dict[str, Any] = {"set": name, "budget_s": budget, **sides}
            if len(sides) == 2:
                a, b = sides["unet-dist"], sides["smp"]
                row["ratios"] = {k: a[k] / b[k] for k in a if k in b and b[k]}
            table.append(row)
    doc = {
        "benchmark": "quality", "command": "python bench/quality.py " + " ".join(sys.argv[1:]),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, **_versions()},
        "threads": THREADS, "hetero_n": HETERO_N, "overrides": args.overrides, "summary": table, "samples": samples,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    return table


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
    """Per set and budget, both sides and their ratio (mean of seeds; speeds are medians)."""
    cols = [*(f"mean_best_val_{m}" for m in METRICS), "mean_test_image_iou", "mean_test_iou",
            "median_train_images_per_s", "median_epochs"]
    lines = ["| set | budget | side | val image IoU | val image mean IoU | val pooled IoU | val pooled mean IoU | "
             "test image IoU | test pooled IoU | train img/s | epochs |", "|" + "---|" * 11]
    fmt = lambda v, k: "–" if v is None else (f"{v:.0f}" if k == "median_epochs" else f"{v:.2f}" if "per_s" in k else f"{v:.3f}")  # noqa: E731
    for row in table:
        for side in ("unet-dist", "smp"):
            if side in row:
                lines.append(f"| {row['set']} | {row['budget_s']:.0f} s | {side} | "
                             + " | ".join(fmt(row[side].get(k), k) for k in cols) + " |")
        if "ratios" in row:
            r = row["ratios"]
            lines.append(f"| {row['set']} | {row['budget_s']:.0f} s | **ratio** | "
                         + " | ".join("" if k == "median_epochs" else f"**{r[k]:.3f}**" if k in r else "–" for k in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
