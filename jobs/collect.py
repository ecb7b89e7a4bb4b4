"""Ray job entrypoint: ``ray job submit --working-dir . -- python jobs/collect.py --storage s3://bucket/runs --export s3://bucket/models``.

Collects every run and campaign under ``--storage`` into ``STORAGE/leaderboard/``, exports the best ``--top``
checkpoints with their cards and the ``champion`` alias to ``--export``, and writes the report of the best
campaign (or run) to ``--report`` (default ``STORAGE/reports/<name>.html``). Needs no Ray cluster resources;
prints one JSON line. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.common import check_job_paths, run_job  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Collect the leaderboard, export the best models and write the report.")
    p.add_argument("--storage", required=True, help="storage URI the runs and campaigns were written to")
    p.add_argument("--export", dest="export_to", help="model store for the best checkpoints (outside --storage)")
    p.add_argument("--top", type=int, default=3, help="checkpoints to export (default 3)")
    p.add_argument("--report", dest="report_to", help="report path or URI (default STORAGE/reports/<name>.html)")
    p.add_argument("--campaign", action="append", help="only these campaigns or runs (repeatable)")
    args = p.parse_args(argv)

    def body() -> str:
        check_job_paths({"--storage": args.storage, "--export": args.export_to, "--report": args.report_to})
        from unet_dist.collect.publish import publish

        return publish(args.storage, export_to=args.export_to, top=args.top, report_to=args.report_to,
                       campaigns=args.campaign).to_json()

    return run_job(body)


if __name__ == "__main__":
    raise SystemExit(main())
