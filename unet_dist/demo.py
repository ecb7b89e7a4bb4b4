"""The end-to-end demo behind `make demo`: data -> ingest -> 2-worker Ray Train run -> best checkpoint.

With no ``data`` it generates and ingests the package's deterministic SYNTHETIC set, so it runs
on a fresh clone with no downloads; ``data`` points it at a real folder of images/ and masks/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from unet_dist.config import Config

# A demo profile sized for a 2-core laptop (minutes, not hours), layered over the schema defaults.
# 0.5 CPU and 1 torch thread per worker leave the driver and Ray room on 2 cores.
DEMO_PROFILE: dict[str, Any] = {
    "model": {"depth": 4, "base_filters": 16},
    "data": {"crop_size": 96, "batch_size": 8, "val_batch_size": 4},
    "train": {"epochs": 8, "lr": 3e-3, "warmup_epochs": 1, "log_images": 2},
    "resources": {"num_workers": 2, "cpus_per_worker": 0.5, "torch_threads": 1},
}
SYNTHETIC = {"n": 48, "size": 128, "mode": "binary", "seed": 0}


def run_demo(cfg: Config, data: str | None = None, workdir: str = "demo-runs", console: Console | None = None) -> Any:
    """Generate (or take) data, ingest it next to the runs, train, and return the training summary."""
    from unet_dist.data.ingest import ingest
    from unet_dist.data.synthetic import demo_dataset
    from unet_dist.train import fit

    console = console or Console()
    work = Path(workdir).resolve()
    if data is None:
        console.rule(f"[bold]1/2 data[/]: {SYNTHETIC['n']} SYNTHETIC {SYNTHETIC['size']}² pairs -> {work / 'synthetic'}")
        dataset = demo_dataset(str(work / "synthetic"), progress=True, **SYNTHETIC)
    else:
        dataset = str(work / "dataset")
        console.rule(f"[bold]1/2 ingest[/] {data} -> {dataset}")
        ingest(data, dataset, cfg.ingest, cfg.storage, progress=True, console=console)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": dataset})})
    if cfg.storage.uri == type(cfg.storage)().uri:
        cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"uri": str(work / "runs")})})
    console.rule(f"[bold]2/2 train[/]: {cfg.resources.num_workers} workers, {cfg.train.epochs} epochs -> {cfg.storage.uri}")
    return fit(cfg, console=console, progress=True)
