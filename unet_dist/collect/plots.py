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
