"""The driver's live views: a run's progress panel and the thread plumbing a campaign's trial table shares."""

from __future__ import annotations

import threading
import time
from typing import Any

from unet_dist.config import Config
from unet_dist.runs import RunDir


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

    def _loop(self) -> None:
        from rich.live import Live

        with Live(self.render(), console=self.console, refresh_per_second=2, transient=self.transient) as live:
            while not self._stop.wait(self.interval):
                live.update(self.render())
            live.update(self.render())
        if not self.console.is_terminal:  # rich leaves a non-terminal's last frame open: a JSON line would join it
            self.console.line()


class LiveView(LiveTable):
    """One run's progress (``progress.json`` / ``metrics.jsonl``) as a live panel."""

    def __init__(self, run: RunDir, cfg: Config, console: Any, interval: float = 1.0) -> None:
        super().__init__(console, interval)
        self.run, self.cfg = run, cfg

    def _read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        try:
            return self.run.read_progress(), self.run.metrics()
        except Exception:  # storage hiccups must never kill the run's driver
            return {}, []

    def render(self) -> Any:
        from rich.table import Table

        prog, rows = self._read()
        tcfg = self.cfg.train
        epochs, monitor = tcfg.epochs, tcfg.monitor
        t = Table(title=f"unet-dist train · {self.run.uri}", show_header=True, expand=False)
        shown = metric_label(monitor)
        for col in ("epoch", "step", "loss", "val IoU", shown, f"best {shown}", "img/s", "elapsed", "ETA"):
            t.add_column(col, justify="right")
        done = len(rows)
        per_epoch = sum(r["epoch_time_s"] for r in rows) / done if done else None
        values = [r[monitor] for r in rows if isinstance(r.get(monitor), (int, float))]
        best = (max if tcfg.monitor_mode == "max" else min)(values) if values else None
        last = rows[-1] if rows else {}
        t.add_row(
            f"{min(prog.get('epoch', 0) + 1, epochs)}/{epochs}",
            f"{prog.get('step', 0)}/{prog.get('steps_per_epoch', '?')}",
            f"{prog['loss']:.4f}" if "loss" in prog else "-",
            f"{last['val_iou']:.4f}" if last else "-",
            f"{last[monitor]:.4f}" if last.get(monitor) is not None else "-",
            f"{best:.4f}" if best is not None else "-",
            f"{prog.get('images_per_s', 0):.1f}",
            f"{time.time() - self._t0:.0f}s",
            f"{per_epoch * (epochs - done):.0f}s" if per_epoch else "-",
        )
        return t
