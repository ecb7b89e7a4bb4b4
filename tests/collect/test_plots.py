"""The report's figures (unet_dist.collect.plots): which images a histogram marks as carrying the pixels."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from unet_dist.collect.plots import heaviest, histogram_png


@pytest.mark.parametrize("pixels,expected", [
    ([64 * 64] * 20 + [1024 * 1024], [False] * 20 + [True]),  # one big image holds over half: only it
    ([100, 100, 100, 100], [True, True, False, False]),                    # uniform: half of them
    ([5, 300, 5, 290], [False, True, False, False]),                        # 300 of 600 is half
    ([7], [True]),
    ([], []),
])
def test_heaviest_are_the_fewest_largest_images_holding_half_the_pixels(pixels, expected) -> None:
    assert heaviest(pixels) == expected


def test_histogram_with_heavy_images_is_a_png_with_two_colours() -> None:
    values = [0.9] * 20 + [0.1, 0.12]
    plain = Image.open(io.BytesIO(histogram_png(values, "IoU per image"))).convert("RGB")
    marked = Image.open(io.BytesIO(histogram_png(values, "IoU per image", heaviest([64 * 64] * 20 + [1024 * 1024] * 2))))
    marked = marked.convert("RGB")
    orange = (255, 127, 14)  # matplotlib's C1
    assert orange in {c for _, c in marked.getcolors(1 << 20)} and orange not in {c for _, c in plain.getcolors(1 << 20)}


def test_curves_count_passes_from_zero_on_whole_epochs(monkeypatch) -> None:
    """Issue 22: 1-epoch trials sit on an integer epoch axis (not one from -0.04 to 0.04), and a run validating
    mid-pass (train.val_every_*) is placed by the passes it trained."""
    from unet_dist.collect import plots

    figures = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or b"")
    row = {"train_iou": 0.5, "val_iou": 0.6, "train_loss": 1.0, "val_loss": 0.9}
    plots.curves_png({"one epoch": [{"epoch": 0, **row}],
                      "rounds": [{"epoch": 0, "epochs_done": 0.5, **row}, {"epoch": 1, "epochs_done": 1.0, **row}]})
    for ax in figures[0].axes[:2]:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert lo == 0 and 1 <= hi < 1.5 and all(float(t).is_integer() for t in ticks) and 1 in ticks, (lo, hi, ticks)
        xs = sorted({float(x) for line in ax.get_lines() for x in line.get_xdata()})
        assert xs == [0.5, 1.0]
