"""Ray job entrypoint: ``ray job submit --working-dir . -- python jobs/tune.py --config jobs/configs/quick.yaml [--resume]``.

Attaches to the cluster named by RAY_ADDRESS (set by ``ray job submit``), runs the campaign with
:func:`unet_dist.tune.run_campaign`, prints the summary as one JSON line. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet_dist.config import load_config  # noqa: E402
from unet_dist.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run (or resume) a tuning campaign on the running Ray cluster.")
    p.add_argument("--config", required=True, help="campaign YAML (examples in jobs/configs/).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="Override a config key.")
    p.add_argument("--storage", help="storage URI (storage.uri)")
    p.add_argument("--resume", action="store_true", help="continue the campaign of this name from storage")
    p.add_argument("--no-progress", action="store_true", help="No live table (logs only).")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, [*args.overrides, *([f"storage.uri={args.storage}"] if args.storage else [])])
        from unet_dist.tune import run_campaign  # after the config: a config error needs neither torch nor Ray

        summary = run_campaign(cfg, resume=args.resume, progress=not args.no_progress)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(summary.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
