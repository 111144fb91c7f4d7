"""The everything-mode point grid, in the frame's own pixel coordinates.

Training (nearest neighbour assignment) and inference (the generator) both take their points from
`grid_points`, so a training prompt is always exactly a point the generator prompts with, for any
frame size. The layout is SAM's `build_point_grid` (cell centres of an n x n partition).
"""
from __future__ import annotations

import numpy as np
from segment_anything.utils.amg import build_point_grid


def grid_points(points_per_side: int, height: int, width: int) -> np.ndarray:
    """(n*n, 2) float64 xy pixel coordinates, row-major (y outer, x inner), as SamAutomaticMaskGenerator."""
    return build_point_grid(points_per_side) * np.array([[width, height]], dtype=np.float64)


def pixel_of(points: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer (row, col) of the pixel containing each continuous xy point."""
    cols = np.clip(np.floor(points[:, 0]).astype(np.int64), 0, width - 1)
    rows = np.clip(np.floor(points[:, 1]).astype(np.int64), 0, height - 1)
    return rows, cols
