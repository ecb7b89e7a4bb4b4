"""CPU levers for the default U-Net's training step, side by side in one run: channels_last, torch.compile
(inductor on CPU), and 2 threads in one process vs 2 processes x 1 thread (what 2 DDP workers get).

Each configuration trains the default model (``ModelConfig()``) on random 256² crops, batch 4 per process,
dice+CE, AdamW; repeats interleave and the medians are reported. ``torch.compile`` also reports its compile time,
which a time-budgeted run pays out of its budget.

    python bench/cpu_levers.py [--repeats 3 --steps 6] [--out bench/results/cpu_levers.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unet_dist.config import ModelConfig  # noqa: E402
from unet_dist.models import create_unet  # noqa: E402
from unet_dist.losses import create_loss  # noqa: E402

SIZE, BATCH = 256, 4


def steps(threads: int, batch: int, n: int, channels_last: bool = False, compile_: bool = False) -> dict[str, float]:
    """Images/s of ``n`` timed train steps after one untimed step (and the compile time, when compiling)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_unet(ModelConfig())
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = create_loss("dice_ce", 2)
    x, y = torch.randn(batch, 1, SIZE, SIZE), torch.randint(0, 2, (batch, SIZE, SIZE))
    t_compile = time.perf_counter()
    fwd = torch.compile(model) if compile_ else model
    for i in range(n + 2):
        if i == 2:
            t0 = time.perf_counter()
            warm = t0 - t_compile
        loss = loss_fn(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"images_per_s": n * batch / (time.perf_counter() - t0), "first_two_steps_s": warm}


def two_processes(n: int, channels_last: bool) -> float:
    """Aggregate images/s of 2 processes x 1 thread training at once (the CPU share of 2 DDP workers)."""
    code = (f"import json,sys; sys.path.insert(0,{str(REPO / 'bench')!r}); import cpu_levers as b; "
            f"print(json.dumps(b.steps(1, {BATCH}, {n}, channels_last={channels_last})))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    return sum(json.loads(p.communicate()[0].strip().splitlines()[-1])["images_per_s"] for p in procs)


CONFIGS = {
    "1 thread, NCHW": lambda n: steps(1, BATCH, n)["images_per_s"],
    "1 thread, channels_last": lambda n: steps(1, BATCH, n, channels_last=True)["images_per_s"],
    "1 process x 2 threads, batch 8, channels_last": lambda n: steps(2, 2 * BATCH, n, channels_last=True)["images_per_s"],
    "2 processes x 1 thread, batch 4 each, channels_last": lambda n: two_processes(n, True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "cpu_levers.json"))
    args = ap.parse_args()
    samples: dict[str, list[float]] = {k: [] for k in CONFIGS}
    for _ in range(args.repeats):
        for name, fn in CONFIGS.items():
            samples[name].append(fn(args.steps))
            print(name, f"{samples[name][-1]:.2f}", flush=True)
    compiled = steps(1, BATCH, args.steps, channels_last=True, compile_=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {
        "channels_last_vs_nchw": med["1 thread, channels_last"] / med["1 thread, NCHW"],
        "compile_vs_eager_channels_last": compiled["images_per_s"] / med["1 thread, channels_last"],
        "2x1_vs_1x2": med["2 processes x 1 thread, batch 4 each, channels_last"] / med["1 process x 2 threads, batch 8, channels_last"],
    }
    doc = {"benchmark": "cpu_levers", "command": "python bench/cpu_levers.py " + " ".join(sys.argv[1:]),
           "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
           "versions": {"torch": torch.__version__}, "size": SIZE, "batch": BATCH, "median_images_per_s": med,
           "compiled": compiled, "ratios": ratios, "samples": samples}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print("| configuration (default U-Net, 256² crops) | images/s, median |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| torch.compile, 1 thread, channels_last (compile + 2 steps: {compiled['first_two_steps_s']:.1f} s) | "
          f"{compiled['images_per_s']:.2f} |")
    print("\n" + "\n".join(f"- {k}: {v:.2f}" for k, v in ratios.items()))


if __name__ == "__main__":
    main()
