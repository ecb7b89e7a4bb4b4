"""A live terminal view that re-renders from storage on a driver thread: the base of a run's progress panel
(:mod:`unet_dist.train.live`) and a campaign's trial table (:class:`unet_dist.tune.campaign.CampaignView`). Plain rich, no torch."""

from __future__ import annotations

import threading
import time
from typing import Any


def metric_label(metric: str) -> str:
    """A metric's name as a narrow column header: ``val_mean_iou`` -> ``val mIoU``."""
    return metric.replace("mean_iou", "mIoU").replace("_iou", "_IoU").replace("_", " ")


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
