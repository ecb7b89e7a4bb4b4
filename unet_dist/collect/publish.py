"""Collect, export and report in one call: what ``jobs/collect.py`` and ``make demo`` do after training.

The leaderboard goes to ``STORAGE/leaderboard/``, the best checkpoints to a model store (``export_to``, outside
STORAGE) with its ``champion`` alias, and the report of the campaign (or single run) that holds the best row to
``report_to`` (default ``STORAGE/reports/<name>.html``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from unet_dist.collect.export import ExportResult, export
from unet_dist.collect.leaderboard import Leaderboard, collect
from unet_dist.config import StorageConfig
from unet_dist.errors import UserError
from unet_dist.runs import report_location
from unet_dist.storage import resolve



@dataclass
class Published:
    """The leaderboard, what was exported (if asked) and where the report went."""

    leaderboard: Leaderboard
    exported: ExportResult | None
    report: str | None
    report_of: str | None
    insight: Any = None
    """What the best row's campaign teaches (:class:`~unet_dist.collect.insight.Insight`); None for a single run."""

    def to_json(self) -> str:
        return json.dumps({
            "leaderboard": self.leaderboard.uri, "summary": self.leaderboard.summary(), "metric": self.leaderboard.metric,
            "best": self.leaderboard.rows[0] if self.leaderboard.rows else None,
            "champion": self.exported and self.exported.champion, "models": self.exported and self.exported.dest,
            "report": self.report, "report_of": self.report_of,
            "insight": self.insight and json.loads(self.insight.to_json())}, default=str)


def best_subject(board: Leaderboard, root: str, storage: StorageConfig | None = None) -> str | None:
    """The folder of the campaign (or single run) that holds the leaderboard's best row."""
    if not board.rows:
        return None
    top = board.rows[0]
    return (resolve(root, storage) / (top["campaign"] or top["trial"])).uri


def publish(root: str, *, storage: StorageConfig | None = None, export_to: str | None = None, top: int = 3,
            report_to: str | None = None, report: bool = True, campaigns: Sequence[str] | None = None,
            progress: bool = False) -> Published:
    """Write the leaderboard, export the best ``top`` checkpoints to ``export_to`` and render the best one's report."""
    from unet_dist.collect.report import write_report

    board = collect(root, storage=storage, campaigns=campaigns)
    if not board.rows:
        raise UserError(f"no runs or campaigns under {root}: nothing to collect ({board.summary()})")
    exported = export(root, export_to, top=top, campaigns=campaigns, storage=storage) if export_to else None
    subject = best_subject(board, root, storage) if report else None
    if not subject:
        return Published(board, exported, None, None, best_campaign_insight(board, root, storage))
    out = report_to or report_location(resolve(root, storage), resolve(subject, storage)).uri
    page = write_report(subject, out, storage=storage, progress=progress)
    return Published(board, exported, out, subject, page.insight)  # the report's: its metrics are read once


def best_campaign_insight(board: Leaderboard, root: str, storage: StorageConfig | None = None) -> Any:
    """Importance and effects over the trials of the campaign that holds the best row (None for a single run)."""
    from dataclasses import replace

    from unet_dist.collect.insight import campaign_insight

    campaign = board.rows[0].get("campaign")
    if not campaign:
        return None
    rows = [r for r in board.rows if r.get("campaign") == campaign]
    return campaign_insight(replace(board, rows=rows), resolve(root, storage))


def summary_lines(result: Published) -> list[tuple[str, Any]]:
    """The label/value pairs a terminal shows after publishing."""
    best = result.leaderboard.rows[0] if result.leaderboard.rows else {}
    return [("leaderboard", result.leaderboard.uri), ("collected", result.leaderboard.summary()),
            (f"best {result.leaderboard.metric}", best.get("best_value")),
            ("what matters", result.insight and result.insight.headline()),
            ("champion", result.exported and f"{result.exported.dest}/champion -> {result.exported.champion}"),
            ("report", result.report)]
