"""Ray job entrypoint: ``ray job submit --working-dir . -- python jobs/tune.py --config jobs/configs/quick.yaml [--resume]``.

Attaches to the cluster named by RAY_ADDRESS (set by ``ray job submit``), runs the campaign with
:func:`unet_dist.tune.run_campaign`, prints the summary as one JSON line. User errors print one line and exit 2.
``--resume-if-exists`` starts the campaign or continues it: what a RayJob retry (a new cluster) needs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import attached, check_job_paths, run_job, run_paths  # noqa: E402
from unet_dist.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run (or resume) a tuning campaign on the running Ray cluster.")
    p.add_argument("--config", required=True, help="campaign YAML (examples in jobs/configs/).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="Override a config key.")
    p.add_argument("--storage", help="storage URI (storage.uri)")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the campaign of this name from storage")
    resume.add_argument("--resume-if-exists", action="store_true",
                        help="continue the campaign if storage holds it, else start it (for retried jobs)")
    p.add_argument("--no-progress", action="store_true", help="No live table (logs only).")
    args = p.parse_args(argv)

    def body() -> str:
        cfg = load_config(args.config, [*args.overrides, *([f"storage.uri={args.storage}"] if args.storage else [])])
        check_job_paths(run_paths(cfg))
        from unet_dist.runs import CampaignDir  # after the config: a config error needs neither torch nor Ray
        from unet_dist.storage import resolve
        from unet_dist.train import preflight
        from unet_dist.tune import run_campaign

        resume = args.resume or (args.resume_if_exists and CampaignDir(resolve(cfg.storage.uri, cfg.storage) / cfg.tune.name).exists())
        preflight(cfg)  # a missing dataset or unloadable weights answer before the job attaches to Ray
        with attached(cfg):
            return run_campaign(cfg, resume=resume, progress=not args.no_progress).to_json()

    return run_job(body)


if __name__ == "__main__":
    raise SystemExit(main())
