"""How fast the CLI answers when it only reads a config: ``unet-dist config`` and a one-line config error; and what
every Ray Train worker pays to import its loop (``import unet_dist.train.loop``) before its first step.

Each command runs in a fresh process (what a user waits for), median of N runs, side by side with the baseline
the config path paid before it stopped importing torch: a process that imports torch and torchvision. Pass
``--tree PATH`` to time another checkout the same way (e.g. a worktree of an older commit). Goal: under 1.5 s.

    python bench/cli_latency.py [--repeats 5] [--tree PATH ...] [--out bench/results/cli_latency.json]
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

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "config": ["-m", "unet_dist", "config"],
    "config_error": ["-m", "unet_dist", "config", "--set", "model.backbone=resnet9"],
    "config_model": ["-m", "unet_dist", "config", "--set", "model.backbone=resnet34", "--set", "model.weights=DEFAULT"],
    "worker_import": ["-c", "import unet_dist.train.loop"],
}
BASELINE = ["-c", "import torch, torchvision"]


def seconds(args: list[str], tree: Path, repeats: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=tree, env=env, capture_output=True, check=False)
        out.append(time.perf_counter() - start)
    return out


def measure(tree: Path, repeats: int) -> dict[str, dict[str, float | list[float]]]:
    rows = {}
    for name, args in COMMANDS.items():
        runs = seconds(args, tree, repeats)
        rows[name] = {"median_s": round(statistics.median(runs), 3), "runs_s": [round(r, 3) for r in runs]}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to time the same way")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cli_latency.json")
    ns = ap.parse_args()
    seconds(COMMANDS["config"], REPO, 1)  # warm the file cache
    base = seconds(BASELINE, REPO, ns.repeats)
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        "repeats": ns.repeats,
        "baseline_import_torch_torchvision": {"median_s": round(statistics.median(base), 3),
                                              "runs_s": [round(r, 3) for r in base]},
        "this_tree": measure(REPO, ns.repeats),
        "other_trees": {str(t): measure(t.resolve(), ns.repeats) for t in ns.tree},
    }
    base_med = result["baseline_import_torch_torchvision"]["median_s"]
    for name, row in result["this_tree"].items():
        row["ratio_to_baseline"] = round(row["median_s"] / base_med, 3)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
