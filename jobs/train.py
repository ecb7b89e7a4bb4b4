"""Ray job entrypoint: ``ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train.yaml [--set k=v ...]``.

Attaches to the cluster named by RAY_ADDRESS (set by ``ray job submit``), trains with
:func:`unet_dist.train.fit`, prints the summary as one JSON line. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import attached, check_job_paths, run_job, run_paths  # noqa: E402
from unet_dist.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train a U-Net on the running Ray cluster.")
    p.add_argument("--config", required=True, help="YAML config (examples in jobs/configs/).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="Override a config key, e.g. train.epochs=5.")
    p.add_argument("--no-progress", action="store_true", help="No live view (logs only).")
    args = p.parse_args(argv)

    def body() -> str:
        cfg = load_config(args.config, args.overrides)
        check_job_paths(run_paths(cfg))
        from unet_dist.train import fit, preflight  # after the config: a config error needs neither torch nor Ray

        preflight(cfg)  # a missing dataset or unloadable weights answer before the job attaches to Ray
        with attached(cfg):
            return fit(cfg, progress=not args.no_progress).to_json()

    return run_job(body)


if __name__ == "__main__":
    raise SystemExit(main())
