"""The report's figures as PNG bytes: matplotlib on the Agg backend (no display), overlays through Pillow.

Every function returns PNG bytes, ready to embed in a self-contained page as a ``data:`` URI.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any, Sequence

import numpy as np
import torch

from unet_dist.collect.insight import log_scaled
from unet_dist.runs import epochs_done

CURVES = (("iou", "IoU"), ("loss", "loss"))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # a Figure with no pyplot state renders on Agg, whatever the environment

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", pad_inches=0.05)
    return buf.getvalue()


def curves_png(series: dict[str, list[dict[str, Any]]]) -> bytes:
    """Train (dashed) and val (solid) IoU and loss per epoch, one colour per run: ``{label: metrics rows}``; x counts
    passes trained, so runs validating mid-pass (``train.val_every_*``) line up with those that do not."""
    fig = _figure(11, 4.2 + 0.22 * math.ceil(len(series) / 2))
    axes = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(series))]
    longest = max((epochs_done(r) for rows in series.values() for r in rows), default=1.0)
    for ax, (key, title) in zip(axes, CURVES):
        ax.set_xlim(0, max(1.0, longest) * 1.04)  # from 0 passes, on whole-epoch ticks, even for 1-epoch trials
        for colour, (label, rows) in zip(colours, series.items()):
            for split, style in (("train", "--"), ("val", "-")):
                points = [(epochs_done(r), r[f"{split}_{key}"]) for r in rows
                          if isinstance(r.get(f"{split}_{key}"), (int, float)) and math.isfinite(r[f"{split}_{key}"])]
                if points:
                    x, y = zip(*points)
                    ax.plot(x, y, style, color=colour, marker="o", markersize=3,
                            label=label if split == "val" else None)
        ax.set_title(f"{title} per epoch (solid: val, dashed: train)", fontsize=10)
        ax.set_xlabel("epochs trained (passes over the training data)")
        ax.set_ylabel(title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(2, len(labels)), fontsize=9, frameon=False)
    return _png(fig)


def confusion_png(cm: Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    """The confusion matrix as a heat map: colour is the share of each true class (row), cells show count and share."""
    counts = np.asarray(cm, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(counts)
    side = min(2.4 + 0.8 * n, 9.0)
    fig = _figure(side + 0.9, side)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    names = list(class_names) if len(class_names) == n else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), names, rotation=90 if n <= 4 else 0, va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{counts[i, j]:,}\n{shares[i, j]:.1%}", ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.5 else "black")
    return _png(fig)


def heaviest(pixels: Sequence[int], share: float = 0.5) -> list[bool]:
    """Which images carry ``share`` of all pixels: the fewest, largest first (ties by position). On a uniform set
    that is half of them; on a mixed set, the few large images that decide a pooled score."""
    total, held, out = sum(pixels), 0, [False] * len(pixels)
    for i in sorted(range(len(pixels)), key=lambda i: (-pixels[i], i)):
        if held >= share * total:
            break
        out[i], held = True, held + pixels[i]
    return out


def histogram_png(values: Sequence[float], label: str, heavy: Sequence[bool] | None = None) -> bytes:
    """The distribution of one per-image score; with ``heavy`` (:func:`heaviest`), the images carrying half the
    pixels are stacked in their own colour, so a reader sees which scores a pooled number mostly counts."""
    fig = _figure(4.6, 3.0)
    ax = fig.subplots()
    kept = [(v, h) for v, h in zip(values, heavy or [False] * len(values)) if math.isfinite(v)]
    others, heavies = [v for v, h in kept if not h], [v for v, h in kept if h]
    if heavy is None:
        ax.hist(others, bins=20, range=(0.0, 1.0), color="C0", edgecolor="white")
    else:
        ax.hist([others, heavies], bins=20, range=(0.0, 1.0), stacked=True, color=["C0", "C1"], edgecolor="white",
                label=["other images", f"{len(heavies)} largest: half the pixels"])
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel(label)
    ax.set_ylabel("images")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    return _png(fig)


def rgb_tensor_png(rgb: torch.Tensor) -> bytes:
    """A ``3 x H x W`` float overlay in [0, 1] (from :func:`unet_dist.inference.overlay.overlay`) as PNG."""
    from PIL import Image

    pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# --- campaign insight (unet_dist.collect.insight) ------------------------------------------------------------------

def _axis_positions(values: Sequence[Any]) -> tuple[list[float], list[float], list[str]]:
    """Values of one key on a 0..1 axis: categories evenly spaced, numbers linearly (logarithmically when positive
    and spanning 20x or more); with the tick positions and labels."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric and len(set(values)) > 1:
        lo, hi = min(values), max(values)
        f = (lambda v: math.log10(v)) if log_scaled(values) else float
        span = f(hi) - f(lo)
        ticks = [lo, hi]
        return [(f(v) - f(lo)) / span for v in values], [0.0, 1.0], [f"{t:.3g}" for t in ticks]
    cats = sorted({str(v) for v in values})
    pos = {c: (i / (len(cats) - 1) if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return [pos[str(v)] for v in values], list(pos.values()), cats


def parallel_png(points: Sequence[Any], keys: Sequence[str], metric: str, mode: str) -> bytes:
    """Parallel coordinates: one line per compared trial (:class:`~unet_dist.collect.insight.Point`) through its
    searched values (``keys``, most important first) to its metric; colour is the metric, the best trial is bold."""
    from matplotlib import cm, colors

    axes_names = [k.rsplit(".", 1)[-1] for k in keys] + [metric.removeprefix("val_")]
    fig = _figure(max(6.0, 1.9 * len(axes_names)), 4.0)
    ax = fig.subplots()
    columns = [_axis_positions([p.params.get(k) for p in points]) for k in keys]
    values = [p.value for p in points]
    columns.append(_axis_positions(values))
    norm = colors.Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-9)
    best = (max if mode == "max" else min)(range(len(points)), key=lambda i: values[i])
    order = sorted(range(len(points)), key=lambda i: values[i] if mode == "max" else -values[i])  # best drawn last
    for i in order:
        ys = [col[0][i] for col in columns]
        ax.plot(range(len(columns)), ys, color=cm.viridis(norm(values[i])), lw=2.6 if i == best else 1.1,
                alpha=1.0 if i == best else 0.75)
    for x, (_, ticks, labels) in enumerate(columns):
        ax.axvline(x, color="#555", lw=0.8)
        for t, label in zip(ticks, labels):
            ax.text(x + 0.03, t, label, fontsize=8, va="center", ha="left",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xticks(range(len(columns)), axes_names, fontsize=9)
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(columns) - 0.6)
    ax.set_ylim(-0.08, 1.08)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, fraction=0.03, label=metric)
    return _png(fig)


def effects_png(keys: Sequence[Any], metric: str, mode: str) -> bytes:
    """One panel per searched key (:class:`~unet_dist.collect.insight.KeyInsight`, most important first): the mean
    metric of each value with its 95 % bootstrap interval and trial count."""
    n = len(keys)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(4.0 * cols, 2.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, k in zip(axes, keys):
        effects = k.ordered(mode)
        y = range(len(effects))
        means = [e.mean for e in effects]
        err = [[e.mean - e.low for e in effects], [e.high - e.mean for e in effects]]
        ax.errorbar(means, y, xerr=err, fmt="o", color="C0", ecolor="C0", capsize=3)
        ax.set_yticks(list(y), [f"{e.value[:18]} (n={e.n})" for e in effects], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{k.key}  (importance {k.importance:.2f})", fontsize=9)
        ax.set_xlabel(metric, fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    for ax in axes[n:]:
        ax.set_visible(False)
    return _png(fig)


def pareto_front(costs: Sequence[float], values: Sequence[float], mode: str) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and value (``mode``), cheapest first."""
    sign = 1.0 if mode == "max" else -1.0
    front, best = [], -math.inf
    for i in sorted(range(len(costs)), key=lambda i: (costs[i], -sign * values[i])):
        if sign * values[i] > best:
            front.append(i)
            best = sign * values[i]
    return front


COSTS = {"gpu_hours": ("GPU-hours", "GPU-hours of the trial (GPUs held x wall time)"),
         "wall_time_s": ("wall time", "wall time of the trial (s)")}
"""A trial's cost on the Pareto plot: ``{point field: (name, axis label)}``."""


def pareto_cost(points: Sequence[Any]) -> str:
    """What the Pareto plot charges a trial (a :data:`COSTS` key): GPU-hours where any trial held a GPU, else wall
    time (CPU trials hold no GPU, and 0 GPU-hours for all would say nothing)."""
    gpu = any(isinstance(p.gpu_hours, (int, float)) and p.gpu_hours > 0 for p in points)
    return "gpu_hours" if gpu else "wall_time_s"


def pareto_png(points: Sequence[Any], metric: str, mode: str) -> bytes:
    """Every trial's best metric (over its whole run, early stops included) against its cost (:func:`pareto_cost`);
    the Pareto front, the trials nothing beats on both, joined and labelled."""
    key = pareto_cost(points)
    timed = [p for p in points if isinstance(getattr(p, key), (int, float)) and math.isfinite(getattr(p, key))]
    fig = _figure(6.4, 3.8)
    ax = fig.subplots()
    costs, values = [getattr(p, key) for p in timed], [p.best_value for p in timed]
    front = pareto_front(costs, values, mode)
    ax.scatter(costs, values, s=22, color="#9aa5b1", label="trial")
    fx, fy = [costs[i] for i in front], [values[i] for i in front]
    ax.step(fx, fy, where="post", color="C3", lw=1.2)
    ax.scatter(fx, fy, s=36, color="C3", label="Pareto front", zorder=3)
    for i in front:
        ax.annotate(str(timed[i].trial).rsplit("_", 1)[-1], (costs[i], values[i]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(COSTS[key][1])
    ax.set_ylabel(f"best {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if mode == "max" else "upper right")
    return _png(fig)


def progress_png(runs: Sequence[tuple[str, float, str]], metric: str, mode: str) -> bytes:
    """``(ISO time the run ended, its best metric, its campaign)`` per run as points, one colour per campaign, and the
    best so far over all of them as a step line."""
    from datetime import datetime

    timed = sorted((datetime.fromisoformat(when), value, group) for when, value, group in runs)
    fig = _figure(9.5, 3.8)
    ax = fig.subplots()
    for i, group in enumerate(dict.fromkeys(t[2] for t in timed)):
        xs, ys = zip(*[(t[0], t[1]) for t in timed if t[2] == group])
        ax.scatter(xs, ys, s=18, color=f"C{i % 10}", label=group, zorder=3)
    better = max if mode == "max" else min
    best, line = None, []
    for when, value, _ in timed:
        best = value if best is None else better(best, value)
        line.append((when, best))
    if line:
        ax.step([w for w, _ in line], [b for _, b in line], where="post", color="#1d232a", lw=1.2, label="best so far")
        ax.legend(fontsize=8, loc="best")
    ax.set_ylabel(metric)
    ax.set_xlabel("when the run ended")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _png(fig)
