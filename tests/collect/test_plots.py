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
