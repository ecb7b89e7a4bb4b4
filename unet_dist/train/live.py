"""A run's live progress panel on the driver (:class:`LiveView`, on :class:`unet_dist.live.LiveTable`)."""

from __future__ import annotations

import time
from typing import Any

from unet_dist.config import Config
from unet_dist.live import LiveTable, metric_label
from unet_dist.runs import RunDir, epochs_done


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
        done = epochs_done(rows[-1]) if rows else 0  # passes: a validation round may end mid-pass
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
