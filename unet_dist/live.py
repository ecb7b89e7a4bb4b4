"""A live terminal view that re-renders from storage on a driver thread: the base of a run's progress panel
(:mod:`unet_dist.train.live`) and a campaign's trial table (:class:`unet_dist.tune.campaign.CampaignView`). Plain rich, no torch."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Sequence


def metric_label(metric: str) -> str:
    """A metric's name as a narrow column header: ``val_mean_iou`` -> ``val mIoU``."""
    return metric.replace("mean_iou", "mIoU").replace("_iou", "_IoU").replace("_", " ")


STATUS_SHORT = {"finished": "done", "early_stopped": "early", "running": "run"}
"""Statuses as compact tables show them (the others are short already)."""
MIN_SHARE = 5
"""The narrowest a searched key's column gets in a compact table (4 characters and an ellipsis, or ``3e-04``)."""


def abbreviate(value: Any, width: int = 10) -> str:
    """A searched value or key in at most ``width`` characters: numbers in 3, else 2 significant digits, else
    exponent form; long names cut with an ellipsis (``pixel_shuffle`` -> ``pixel_shu…``)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = next((t for t in (f"{value:.3g}", f"{value:.2g}", f"{value:.0e}") if len(t) <= width), f"{value:.0e}")
    else:
        text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def most_varied(keys: Sequence[str], values: Sequence[Sequence[Any]], k: int) -> list[int]:
    """Indices of the ``k`` keys with the most distinct values (``values``: one row per line, one value per key; a
    key held fixed tells nothing), in key order."""
    distinct = [len({json.dumps(row[i], default=str) for row in values}) for i in range(len(keys))]
    keep = set(sorted(range(len(keys)), key=lambda i: -distinct[i])[:k])
    return [i for i in range(len(keys)) if i in keep]


def compact_table(head: Sequence[str], keys: Sequence[str], tail: Sequence[str], rows: Sequence[tuple[list[str], list[Any],
                  list[str]]], *, title: str | None = None, caption: str = "", width: int = 80,
                  right: frozenset[str] = frozenset({"#"})) -> Any:
    """A rich table that fits ``width`` columns: fixed ``head`` and ``tail`` columns (cells already text) around the
    searched ``keys``, whose names and values are abbreviated to share what the fixed columns leave; when even
    :data:`MIN_SHARE` characters each do not fit, the keys whose values vary most are shown and the caption counts
    the rest. ``rows``: ``(head cells, searched values, tail cells)``; ``right``: head columns justified right (tail
    columns always are)."""
    from rich import box
    from rich.table import Table

    fixed = [*head, *tail]
    cells = [[*h, *t] for h, _, t in rows]
    room = width - sum(max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(fixed)) - 2 * (len(fixed) - 1)
    shown = most_varied(keys, [v for _, v, _ in rows], max(0, room // (MIN_SHARE + 2)))
    share = max(MIN_SHARE, min(12, room // max(1, len(shown)) - 2))
    hidden = len(keys) - len(shown)
    more = f"{hidden} more searched key{'s' * (hidden > 1)}" if hidden else ""
    t = Table(title=title, caption=" · ".join(c for c in (caption, more) if c) or None, box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for name in head:
        t.add_column(name, justify="right" if name in right else "left", no_wrap=True)
    for i in shown:
        t.add_column(abbreviate(keys[i].split(".")[-1], share), no_wrap=True)
    for name in tail:
        t.add_column(name, justify="right", no_wrap=True)
    for h, v, tl in rows:
        t.add_row(*h, *(abbreviate(v[i], share) for i in shown), *tl)
    return t


class LiveTable:
    """A driver thread re-rendering :meth:`render` into a rich live display until the block ends (a context manager).

    The driver's live views (one run, a campaign's trials) read what the run writes to storage, so they show the
    same thing on a laptop and on a cluster, and a storage hiccup only skips a frame.
    """

    def __init__(self, console: Any, interval: float = 1.0, transient: bool = False) -> None:
        self.console, self.interval, self.transient = console, interval, transient
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="unet-dist-live", daemon=True)
        self._t0 = time.time()

    def __enter__(self) -> "LiveTable":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def render(self) -> Any:
        raise NotImplementedError

    def lines(self) -> list[str] | None:
        """For a console that is not a terminal (a log file, ``ray job logs``, CI): the lines of what changed since the
        last call, printed as they come instead of a live table. None (the default): only the last frame is printed."""
        return None

    def log(self, lines: list[str] | None = None) -> None:
        """Print :meth:`lines` (or ``lines``)."""
        for line in self.lines() if lines is None else lines:
            self.console.print(line, highlight=False, soft_wrap=True)

    def _loop(self) -> None:
        from rich.live import Live

        first = None if self.console.is_terminal else self.lines()
        if first is not None:
            self.log(first)
            while not self._stop.wait(self.interval):
                self.log()
            self.log()
            return
        with Live(self.render(), console=self.console, refresh_per_second=2, transient=self.transient) as live:
            while not self._stop.wait(self.interval):
                live.update(self.render())
            live.update(self.render())
        if not self.console.is_terminal:  # rich leaves a non-terminal's last frame open: a JSON line would join it
            self.console.line()
