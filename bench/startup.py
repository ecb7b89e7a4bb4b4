"""What a small run pays before its first step, side by side with the baseline, on the real ISBI set (30 x 512 px):

- read: Ray Data's ``read_parquet(...).materialize()`` (baseline) vs the driver reading the Parquet shards into the
  object store (what ``build_datasets`` does for a split under ``DRIVER_READ_MAX_BYTES``);
- hand-over: a 2-worker ``TorchTrainer`` that streams two epochs of train batches, with "train" streaming-split by
  Ray Data (baseline) vs every worker keeping its share of the whole small split (``needs_split`` False).

Medians over repeats on one local 2-CPU Ray; writes ``bench/results/startup.json``.

    python bench/startup.py [--data ISBI_DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

from unet_dist.config import DataConfig, IngestConfig  # noqa: E402
from unet_dist.data.ingest import ingest  # noqa: E402
from unet_dist.data.manifest import read_manifest, split_paths  # noqa: E402
from unet_dist.data.pipeline import (  # noqa: E402
    _materialized, _read, build_datasets, dataset_config, iter_train_batches, pipeline_spec,
)

READS = {"ray_data_read": lambda paths, fs: _read(paths, fs).materialize(), "driver_read": _materialized}
SPLITS = {"streaming_split": True, "whole_small_split": False}


def read_seconds(manifest: dict, read) -> float:
    """Seconds to put train + val into the object store with ``read``."""
    t0 = time.perf_counter()
    for split in ("train", "val"):
        read(*split_paths(manifest, split)).count()
    return time.perf_counter() - t0


def _loop(config: dict) -> None:
    import ray.train

    ctx = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(2):
        for _ in iter_train_batches(shard, 4, epoch, config["spec"], ctx.get_world_rank(), ctx.get_world_size()):
            pass
        ray.train.report({"epoch": epoch})


def fit_seconds(datasets: dict, spec, split_train: bool, storage: str) -> float:
    """Seconds for a 2-worker TorchTrainer.fit() that streams two epochs of train batches."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(_loop, train_loop_config={"spec": spec}, datasets=datasets,
                           dataset_config=dataset_config(split_train),
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(name=f"startup-{time.time_ns()}", storage_path=storage))
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "isbi2012-membrane"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import ray

    from unet_dist.session import init_local

    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    ingest(args.data, str(tmp / "isbi"), IngestConfig(split=(0.8, 0.2, 0.0)), progress=False)
    manifest = read_manifest(str(tmp / "isbi"))
    samples: dict[str, list[float]] = {name: [] for name in (*READS, *SPLITS)}
    init_local(num_cpus=2, configure_logging=False, log_to_driver=False)
    try:
        cfg = DataConfig(dataset=str(tmp / "isbi"), crop_size=256, batch_size=4)
        datasets = build_datasets(cfg, None, 1, manifest)
        spec = replace(pipeline_spec(cfg, None, 1, manifest), train_rows=manifest["counts"]["train"])
        fit_seconds(datasets, spec, True, str(tmp / "runs"))  # warm-up: a Ray's first fit imports everything
        for _ in range(args.repeats):  # interleaved, so drift on the machine hits both sides alike
            for name, read in READS.items():
                samples[name].append(read_seconds(manifest, read))
            for name, split in SPLITS.items():
                samples[name].append(fit_seconds(datasets, spec, split, str(tmp / "runs")))
    finally:
        ray.shutdown()
    med = {name: statistics.median(v) for name, v in samples.items()}
    result = {
        "bench": "startup", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": f"python bench/startup.py --repeats {args.repeats}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "data": f"ISBI 2012, 512 px ({manifest['counts']['train']} train, {manifest['counts']['val']} val)",
        "seconds": {k: [round(x, 3) for x in v] for k, v in samples.items()},
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "read_speedup": round(med["ray_data_read"] / med["driver_read"], 1),
        "fit_saved_s": round(med["streaming_split"] - med["whole_small_split"], 2),
    }
    (REPO / "bench" / "results" / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_s"]), f"read {result['read_speedup']}x faster, {result['fit_saved_s']} s less per fit")


if __name__ == "__main__":
    main()
