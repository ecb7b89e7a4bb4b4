"""Training overhead benchmark: Ray Train vs plain PyTorch, DDP scaling, U-Net FLOP/s vs matmul FLOP/s.

Side by side in one run, interleaved repeats, medians:
  (a) images/s of a 1-worker Ray Train run vs the identical loop in plain PyTorch (same model, data, threads);
  (b) 2 workers x 1 thread (DDP, gloo) vs 1 worker x 2 threads, both under Ray Train;
  (c) FLOP/s of the U-Net train step (FlopCounterMode) vs measured fp32 matmul FLOP/s.
Writes bench/results/train_overhead.json and prints a markdown table for BENCHMARKS.md.

    python bench/train_overhead.py [--size 128 --batch 4 --steps 10 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_dist.config import ModelConfig  # noqa: E402
from unet_dist.models import create_unet  # noqa: E402
from unet_dist.losses import create_loss  # noqa: E402


def _batches(args: argparse.Namespace, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(args.batch, 1, args.size, args.size, generator=g),
             torch.randint(0, 2, (args.batch, args.size, args.size), generator=g)) for _ in range(n)]


def run_steps(args: dict[str, Any], threads: int, wrap: Any = None) -> dict[str, float]:
    """The measured loop: identical for plain PyTorch and Ray Train (``wrap`` = prepare_model there)."""
    ns = argparse.Namespace(**args)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_unet(ModelConfig(base_filters=ns.base_filters, depth=ns.depth))
    if getattr(ns, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)  # the model converts its input (UNet.memory_format)
    if wrap is not None:
        model = wrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = create_loss("dice_ce", 2)
    data = _batches(ns)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    for i in range(ns.warmup + ns.steps):
        if i == ns.warmup:
            t0 = time.perf_counter()
        x, y = data[i % len(data)]
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - t0
    return {"images_per_s": ns.steps * ns.batch * world / elapsed, "step_s": elapsed / ns.steps}


def _ray_worker(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    out = run_steps(config["args"], config["threads"], wrap=ray.train.torch.prepare_model)
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["out"]).write_text(json.dumps(out))
    ray.train.report(out)


def ray_run(args: dict[str, Any], workers: int, threads: int, storage: str) -> dict[str, float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out = Path(storage) / f"result-{time.time_ns()}.json"
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"args": args, "threads": threads, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": threads}),
        run_config=RunConfig(name=f"bench-{workers}x{threads}-{time.time_ns()}", storage_path=storage),
    )
    t0 = time.perf_counter()
    trainer.fit()
    return {**json.loads(out.read_text()), "wall_s": time.perf_counter() - t0}


def matmul_flops(threads: int, n: int = 1024, reps: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def step_flops(args: dict[str, Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    ns = argparse.Namespace(**args)
    model = create_unet(ModelConfig(base_filters=ns.base_filters, depth=ns.depth))
    x, y = _batches(ns, 1)[0]
    with FlopCounterMode(display=False) as fc:
        create_loss("dice_ce", 2)(model(x), y).backward()
    return float(fc.get_total_flops())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--base-filters", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--channels-last", action="store_true", help="channels_last model (train.channels_last, the default)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="CPU threads/cores used by each configuration.")
    p.add_argument("--out", default=str(REPO / "bench/results/train_overhead.json"))
    ns = p.parse_args()
    args = {k: getattr(ns, k) for k in ("size", "batch", "base_filters", "depth", "steps", "warmup", "channels_last")}
    import ray

    tmp = tempfile.mkdtemp(prefix="urb")
    ray.init(num_cpus=ns.threads, configure_logging=False, _temp_dir=tmp,
             runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}})
    samples: dict[str, list[dict[str, float]]] = {"plain_1x2": [], "ray_1x2": [], "ray_2x1": []}
    flops_samples: list[float] = []
    mm: list[float] = []
    storage = tempfile.mkdtemp(prefix="unet-bench-")
    try:
        for r in range(ns.repeats):
            samples["plain_1x2"].append(run_steps(args, ns.threads))
            samples["ray_1x2"].append(ray_run(args, 1, ns.threads, storage))
            samples["ray_2x1"].append(ray_run(args, 2, 1, storage))
            mm.append(matmul_flops(ns.threads))
            print(f"repeat {r + 1}/{ns.repeats}: " + ", ".join(f"{k}={v[-1]['images_per_s']:.2f} img/s" for k, v in samples.items()), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(storage, ignore_errors=True)
    med = {k: statistics.median(s["images_per_s"] for s in v) for k, v in samples.items()}
    step_s = statistics.median(s["step_s"] for s in samples["plain_1x2"])
    flops = step_flops(args)
    unet_fps = flops / step_s
    mm_fps = statistics.median(mm)
    ratios = {
        "ray_vs_plain": med["ray_1x2"] / med["plain_1x2"],
        "ddp_2x1_vs_1x2": med["ray_2x1"] / med["ray_1x2"],
        "unet_vs_matmul_flops": unet_fps / mm_fps,
    }
    goals = {"ray_vs_plain": 0.97, "ddp_2x1_vs_1x2": 0.90, "unet_vs_matmul_flops": 0.5}
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": ns.threads},
        "params": args | {"repeats": ns.repeats, "model": f"scratch U-Net base_filters={ns.base_filters} depth={ns.depth}"},
        "images_per_s_median": med,
        "samples": samples,
        "train_step_flops": flops,
        "unet_train_flops_per_s": unet_fps,
        "matmul_fp32_flops_per_s": mm_fps,
        "ratios": ratios,
        "goals": goals,
        "meets_goal": {k: ratios[k] >= goals[k] for k in goals},
    }
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n| measure | value | goal |\n|---|---|---|")
    print(f"| plain PyTorch 1x{ns.threads} threads | {med['plain_1x2']:.2f} img/s | |")
    print(f"| Ray Train 1 worker x{ns.threads} threads | {med['ray_1x2']:.2f} img/s | |")
    print(f"| Ray Train 2 workers x1 thread (DDP gloo) | {med['ray_2x1']:.2f} img/s | |")
    print(f"| (a) Ray Train / plain | {ratios['ray_vs_plain']:.3f} | >= 0.97 |")
    print(f"| (b) 2x1 / 1x2 | {ratios['ddp_2x1_vs_1x2']:.3f} | >= 0.90 |")
    print(f"| (c) U-Net step FLOP/s / fp32 matmul FLOP/s | {unet_fps / 1e9:.1f} / {mm_fps / 1e9:.1f} GFLOP/s = {ratios['unet_vs_matmul_flops']:.3f} | >= 0.5 |")
    print(f"\nwritten {ns.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
