"""Overlay labels stay inside the image and do not cover each other."""
from __future__ import annotations

import numpy as np

from saom_core.viz import draw_instances, place_label


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_labels_of_neighbours_are_stacked_not_overlapping():
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(4):  # four objects whose masks start at the same corner
        placed.append(place_label(100, 50, 60, 12, placed, 448, 448))
    assert all(not _overlap(a, b) for i, a in enumerate(placed) for b in placed[i + 1:])
    assert placed[0] == (100, 38, 160, 50)  # first one just above the mask, as before


def test_labels_are_kept_inside_the_image():
    x0, y0, x1, y1 = place_label(440, 2, 60, 12, [], 448, 448)  # right edge, top edge
    assert 0 <= x0 and x1 < 448 and y0 == 0 and y1 == 12


def test_overlay_draws_every_label():
    image = np.full((64, 64, 3), 100, np.uint8)
    masks = np.zeros((2, 64, 64), bool)
    masks[:, 20:40, 20:40] = True  # the same object twice: two labels, one under the other
    out = draw_instances(image, masks, ["Mug", "Cup"], [1, 2])
    assert out.shape == (448, 448, 3)
    black_rows = np.nonzero((out[:, 140:160] == 0).all(-1).any(1))[0]  # label backgrounds are black
    assert black_rows.max() - black_rows.min() > 20  # two label boxes, stacked
