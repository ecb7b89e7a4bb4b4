"""The end-to-end demo behind `make demo`: data -> ingest -> a small Ray Tune campaign of 2-worker Ray Train
runs over backbones x unpooling methods -> the collector's leaderboard -> the champion exported -> the report.

With no ``data`` it generates and ingests the package's deterministic SYNTHETIC set, so it runs on a fresh clone
with no downloads; ``data`` points it at a real folder of images/ and masks/.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console

from unet_dist.config import Config

# A demo profile sized for a 2-core laptop (minutes, not hours), layered over the schema defaults.
# 0.5 CPU and 1 torch thread per worker leave the trial's driver and Ray room on 2 cores.
DEMO_PROFILE: dict[str, Any] = {
    "data": {"crop_size": 96, "batch_size": 8, "val_batch_size": 4},
    "train": {"epochs": 6, "warmup_epochs": 1, "log_images": 2, "num_to_keep": 1},
    "resources": {"num_workers": 2, "cpus_per_worker": 0.5, "torch_threads": 1},
    "tune": {"scheduler": "asha", "grace_period": 2, "reduction_factor": 2, "num_samples": 1, "top": 4,
             "search_space": {"model.backbone": {"grid": ["scratch", "resnet18"]},
                              "model.unpooling": {"grid": ["transpose", "bilinear"]}}},
}
SYNTHETIC = {"n": 48, "size": 128, "mode": "binary", "seed": 0}


def run_demo(cfg: Config, data: str | None = None, workdir: str = "demo-runs", console: Console | None = None) -> tuple[Any, Any]:
    """Generate (or take) data, ingest it next to the campaigns, run the campaign, then collect, export and report.

    Returns the campaign summary and what :func:`~unet_dist.collect.publish.publish` wrote.
    """
    from unet_dist.collect.publish import publish
    from unet_dist.data.ingest import ingest
    from unet_dist.data.synthetic import demo_dataset
    from unet_dist.tune import run_campaign

    console = console or Console()
    work = Path(workdir).resolve()
    if data is None:
        console.rule(f"[bold]1/3 data[/]: {SYNTHETIC['n']} SYNTHETIC {SYNTHETIC['size']}² pairs -> {work / 'synthetic'}")
        dataset = demo_dataset(str(work / "synthetic"), progress=True, **SYNTHETIC)
    else:
        dataset = str(work / "dataset")
        console.rule(f"[bold]1/3 ingest[/] {data} -> {dataset}")
        ingest(data, dataset, cfg.ingest, cfg.storage, progress=True, console=console)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"dataset": dataset})})
    if cfg.storage.uri == type(cfg.storage)().uri:
        cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"uri": str(work / "runs")})})
    if cfg.tune.name == type(cfg.tune)().name:
        name = f"demo-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
        cfg = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"name": name})})
    console.rule(f"[bold]2/3 tune[/]: {len(cfg.tune.search_space)}-key grid, {cfg.resources.num_workers}-worker trials, "
                 f"{cfg.train.epochs} epochs, {cfg.tune.scheduler} -> {cfg.storage.uri}/{cfg.tune.name}")
    summary = run_campaign(cfg, console=console, progress=True)
    console.rule(f"[bold]3/3 collect[/]: leaderboard -> champion in {work / 'models'} -> report")
    published = publish(cfg.storage.uri, storage=cfg.storage, export_to=str(work / "models"), top=1,
                        report_to=str(work / "report.html"), campaigns=[cfg.tune.name], progress=True)
    return summary, published
