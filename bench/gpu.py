"""The GPU check: one prepared script for a machine with one CUDA GPU, under 8 minutes, results with the device named.

    python bench/gpu.py [--out bench/results/gpu.json] [--steps 30] [--skip-cli]      (or: make gpu-check)

1. Train throughput at 512², batch 8, channels_last, of the default U-Net and a resnet34 U-Net, in AMP bf16 and in
   fp32 (TF32 allowed): images/s (median of 3 timed windows) and the fraction of the GPU's dense bf16 peak reached
   (spec-sheet peak where the device is known, and a measured bf16 matmul peak). Anchor: NVIDIA's UNet_Medical
   reference, 119 img/s AMP / 46 img/s TF32 at 572² batch 8 on one A100.
2. ``unet-dist train`` with 1 worker on the GPU: the process group is the one multi-GPU runs start
   (``cpu:gloo,cuda:nccl``), checked from the run's start event and its finished record.
3. A 4-trial campaign shaped like jobs/configs/gpu.yaml: 1-worker trials on 0.25 GPU each; all 4 run at once on the
   one GPU (every trial started before any ended) and finish.
4. ``unet-dist predict --ray`` on the GPU with the campaign's best checkpoint.

Each part's figures are written to ``--out`` as soon as it ends, so a part cut short keeps the ones before it. On a
machine without a CUDA GPU it prints one line and exits 0, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "gpu.json"
ANCHOR = {"source": "NVIDIA DeepLearningExamples UNet_Medical (TF2), 1x A100 40GB, 572x572, batch 8",
          "amp_images_per_s": 119.0, "tf32_images_per_s": 46.0}
BF16_PEAK_TFLOPS = {  # dense bf16 tensor-core peak from the vendors' data sheets
    "H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0,
    "A100": 312.0, "L40S": 362.1, "L40": 181.0, "L4": 121.0, "A10": 125.0, "RTX 6000 Ada": 364.2,
}
MODELS = {"default": {}, "resnet34": {"backbone": "resnet34"}}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result JSON (default bench/results/gpu.json)")
    p.add_argument("--size", type=int, default=512, help="training crop for the throughput part")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30, help="timed steps per window (3 windows, median)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--skip-cli", action="store_true", help="only the throughput part")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds each CLI part may take")
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.size < 32:
        p.error("--steps and --batch must be >= 1 and --size >= 32")
    return args


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write ``results`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def bf16_peak(device_name: str) -> float | None:
    """Spec-sheet dense bf16 TFLOP/s of a device, by the longest table name in its name."""
    hits = [name for name in BF16_PEAK_TFLOPS if name.lower() in device_name.lower()]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def device_info() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    info = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}",
            "count": torch.cuda.device_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "bf16_peak_tflops_spec": bf16_peak(props.name)}
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def matmul_peak(dtype: Any, n: int = 8192, reps: int = 20) -> float:
    """Measured TFLOP/s of an n³ matmul in ``dtype`` (the achievable tensor-core rate)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def train_throughput(model_name: str, amp: bool, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of the training step (forward, dice+CE loss, backward, AdamW) and its FLOPs per image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from unet_dist.config import ModelConfig
    from unet_dist.models import create_unet
    from unet_dist.losses import create_loss

    torch.manual_seed(0)
    model = create_unet(ModelConfig(**MODELS[model_name])).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = create_loss("dice_ce", 2)
    x = torch.randn(args.batch, 1, args.size, args.size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch, args.size, args.size), device="cuda")

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(args.warmup):
        step()
    windows = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        windows.append(args.steps * args.batch / (time.perf_counter() - t0))
    ips = statistics.median(windows)
    flops_per_image = counter.get_total_flops() / args.batch
    del model, opt
    torch.cuda.empty_cache()
    return {"model": model_name, "precision": "amp_bf16" if amp else "fp32_tf32", "size": args.size, "batch": args.batch,
            "channels_last": True, "images_per_s": round(ips, 2), "windows": [round(w, 2) for w in windows],
            "gflops_per_image": round(flops_per_image / 1e9, 2), "tflops": round(ips * flops_per_image / 1e12, 2)}


def cli(*argv: str, timeout: float, env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """One ``unet-dist`` command with ``--json``: its JSON line and wall seconds; raises with its stderr tail on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "unet_dist", *argv, "--json"], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"unet-dist {argv[0]} exited {proc.returncode}: {proc.stderr.strip()[-800:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line), round(time.perf_counter() - t0, 1)


def cli_parts(work: Path, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Parts 2-4 through the real CLI, on a synthetic set ingested here."""
    from unet_dist.data.synthetic import demo_dataset
    from unet_dist.runs import EVENTS_FILE, RUN_RECORD

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    env.pop("RAY_ADDRESS", None)
    dataset = demo_dataset(str(work / "data"), n=48, size=256)
    storage = work / "runs"
    common = ["--data", dataset, "--storage", str(storage), "--set", "resources.use_gpu=true",
              "--set", "data.crop_size=256", "--set", "data.batch_size=8", "--set", "resources.cpus_per_worker=2"]

    summary, wall = cli("train", *common, "--name", "nccl-1w", "--epochs", "3", "--set", "resources.num_workers=1",
                        timeout=args.timeout, env=env)
    record = json.loads((storage / "nccl-1w" / RUN_RECORD).read_text())
    starts = [e for e in map(json.loads, (storage / "nccl-1w" / EVENTS_FILE).read_text().splitlines()) if e["event"] == "start"]
    results["train_cli"] = {"wall_s": wall, "status": record["status"], "epochs": record["epochs"],
                            "use_gpu": record.get("use_gpu"), "backend": starts[-1].get("backend"),
                            "best_val_mean_iou": (record.get("best") or {}).get("value"),
                            "images_per_s": (record.get("final_metrics") or {}).get("images_per_s"),
                            "ok": record["status"] == "finished" and record["epochs"] == 3 and record.get("use_gpu") is True
                            and starts[-1].get("backend") == "cpu:gloo,cuda:nccl"}
    write_results(args.out, results)

    campaign = work / "gpu-pack.yaml"
    campaign.write_text(json.dumps({
        "resources": {"num_workers": 1, "gpus_per_worker": 0.25, "cpus_per_worker": 2},
        "train": {"epochs": 6},
        "tune": {"name": "gpu-pack", "scheduler": "fifo", "num_samples": 4, "max_concurrent_trials": 4,
                 "search_space": {"model.unpooling": {"choice": ["transpose", "bilinear", "nearest", "pixelshuffle"]}}},
    }))
    summary, wall = cli("tune", "--config", str(campaign), *common, timeout=args.timeout * 1.5, env=env)
    spans = []
    for trial in (storage / "gpu-pack" / "trials").iterdir():
        events = [json.loads(ln) for ln in (trial / EVENTS_FILE).read_text().splitlines()]
        spans.append((min(e["time"] for e in events if e["event"] == "start"),
                      max(e["time"] for e in events if e["event"] == "epoch_end")))
    statuses = [t["status"] for t in summary["trials"]]
    together = bool(spans) and max(s for s, _ in spans) < min(e for _, e in spans)
    results["campaign"] = {"wall_s": wall, "trials": len(statuses), "statuses": statuses, "all_at_once": together,
                           "gpus_per_trial": 0.25, "best_value": (summary.get("best") or {}).get("best_value"),
                           "ok": len(statuses) == 4 and set(statuses) == {"finished"} and together}
    write_results(args.out, results)

    images = work / "data" / "raw" / "images"
    best = summary["best"]["best_checkpoint"]
    out, wall = cli("predict", best, str(images), str(work / "pred"), "--ray", "--workers", "1", timeout=args.timeout, env=env)
    results["predict_ray"] = {"wall_s": wall, "predicted": out["predicted"], "device": out.get("device"),
                              "megapixels": out["megapixels"], "duration_s": out["duration_s"],
                              "ok": out["predicted"] > 0 and not out["skipped"] and str(out.get("device", "")).startswith("cuda")}
    write_results(args.out, results)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench/gpu.py: skipped (torch is not installed); nothing written")
        return 0
    if not torch.cuda.is_available():
        print("bench/gpu.py: skipped, no CUDA GPU on this machine; nothing written")
        return 0
    sys.path.insert(0, str(REPO))
    t0 = time.perf_counter()
    torch.backends.cudnn.benchmark = True
    torch.set_float32_matmul_precision("high")  # TF32, as the anchor's fp32 figure
    info = device_info()
    results: dict[str, Any] = {"device": info, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "host": platform.node(), "anchor": ANCHOR, "throughput": []}
    info["bf16_matmul_tflops_measured"] = round(matmul_peak(torch.bfloat16), 1)
    for name in MODELS:
        for amp in (True, False):
            row = train_throughput(name, amp, args)
            peak = info["bf16_peak_tflops_spec"]
            row["fraction_of_bf16_peak_spec"] = round(row["tflops"] / peak, 3) if peak else None
            row["fraction_of_bf16_matmul_measured"] = round(row["tflops"] / info["bf16_matmul_tflops_measured"], 3)
            results["throughput"].append(row)
            write_results(args.out, results)
            print(f"{name:9s} {row['precision']:9s} {row['images_per_s']:8.1f} img/s  {row['tflops']:6.1f} TFLOP/s", flush=True)
    if not args.skip_cli:
        with tempfile.TemporaryDirectory(prefix="unet-gpu-") as work:
            try:
                cli_parts(Path(work), args, results)
            except Exception as err:  # keep what was measured, say what failed
                results["error"] = f"{type(err).__name__}: {err}"
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["ok"] = "error" not in results and all(results.get(k, {}).get("ok") for k in ("train_cli", "campaign", "predict_ray")
                                                   if not args.skip_cli)
    write_results(args.out, results)
    print(f"bench/gpu.py: {'ok' if results['ok'] else 'FAILED'} on {info['name']} in {results['wall_s']:.0f} s -> {args.out}")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
