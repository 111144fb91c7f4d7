"""Prompt points for training and evaluation: the paper's nearest neighbour assignment (Algorithm 1) and its ablations.

Nearest neighbour assignment, per ground-truth mask of a frame:
 1. pool the image features inside the mask (downsampled to the feature grid) into one target
    embedding: 0.5 * max + 0.5 * mean, L2-normalised (as the authors' code);
 2. cosine similarity of the target with every feature location of the frame (the padding is
    excluded) = location confidence map; its argmax is the location prior;
 3. snap the prior to a point of the everything-mode grid (`saom_core.model.grid`, in the
    frame's own pixels: the very points the generator prompts with, for any frame size): of the
    grid points in the prior's feature cell (or, where the grid is coarser than the cells, of the
    nearest ones) the one deepest inside the mask. A cell usually holds several grid points (on
    the tiny config every cell centre is equidistant from 4), and a rule that ignores the object
    (argmin's first) leaves the others unreachable; bilinear upsampling of the map before the
    argmax (PerSAM) still leaves the second grid point from each border unreachable.

Decisions the paper leaves open, taken here:
 * prior snapped outside the mask (a look-alike object won the argmax, or the prior sits on the
   border): the prompt becomes the grid point inside the mask with the highest confidence, so a
   mask is never trained from a point that belongs to something else;
 * no grid point inside the mask (the object is thinner than the grid spacing): the mask is
   `reachable=False`; everything mode cannot find it, so the trainer skips its mask loss and the
   evaluation scores it from the nearest grid point (usually a miss, which is the truth);
 * two masks claim one grid point (only possible where masks overlap): masks are served in
   order of confidence; the loser takes its next-best free grid point inside itself, or becomes
   unreachable if none is left.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch.nn import functional as F

from saom_core.model.grid import pixel_of

PromptMode = Literal["nearest_neighbour", "random_foreground", "mask_centre"]
PROMPT_MODES = ("nearest_neighbour", "random_foreground", "mask_centre")


@dataclass
class Assignment:
    points: np.ndarray  # (N, 2) xy frame pixels: the prompt of each mask
    reachable: np.ndarray  # (N,) bool: the prompt lies inside its mask
    grid_index: np.ndarray  # (N,) int: index into the grid (-1 for off-grid ablation prompts)
    prior: np.ndarray  # (N, 2) xy frame pixels: the location prior (NaN for ablation prompts)
    prior_snapped_inside: np.ndarray  # (N,) bool: step 3 alone landed inside the mask


def mask_coverage(masks: torch.Tensor, input_hw: tuple[int, int], image_size: int, grid_side: int) -> torch.Tensor:
    """(N, H, W) bool frame masks -> (N, g, g) fraction of each feature cell the mask covers."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, grid_side, grid_side), dtype=torch.float32)
    resized = F.interpolate(masks[:, None].float(), size=input_hw, mode="nearest")
    padded = F.pad(resized, (0, image_size - input_hw[1], 0, image_size - input_hw[0]))
    return F.adaptive_avg_pool2d(padded, grid_side)[:, 0]


def location_confidence(features: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each mask's pooled embedding with every feature location.

    features (C, g, g); cells (N, g, g) bool, the cells inside each mask -> (N, g*g).
    """
    flat = features.flatten(1).t().float()  # (g*g, C)
    sel = cells.flatten(1)
    mean = (sel.float() @ flat) / sel.sum(1, keepdim=True).clamp(min=1)
    masked = flat.unsqueeze(0).masked_fill(~sel.unsqueeze(-1), float("-inf"))
    target = F.normalize(0.5 * masked.amax(1) + 0.5 * mean, dim=1)
    return target @ F.normalize(flat, dim=1).t()


def nearest_neighbour_assignment(
    features: torch.Tensor,
    masks: torch.Tensor,
    grid: np.ndarray,
    input_hw: tuple[int, int],
    image_size: int,
) -> Assignment:
    """Algorithm 1 for one frame. features (C, g, g) of the padded input; masks (N, H, W) bool."""
    n, height, width = masks.shape
    side = features.shape[-1]
    stride = image_size / side
    if n == 0:
        empty = np.zeros((0, 2))
        return Assignment(empty, np.zeros(0, bool), np.zeros(0, np.int64), empty, np.zeros(0, bool))
    # fp32 also inside a bf16 training step: the argmax must not depend on the number format
    with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
        coverage = mask_coverage(masks, input_hw, image_size, side)
        cells = coverage >= 0.5
        # A mask smaller than half a cell still needs somewhere to pool from: its best-covered cells.
        tiny = ~cells.flatten(1).any(1)
        if tiny.any():
            best = coverage[tiny].flatten(1).amax(1).clamp(min=1e-6)
            cells[tiny] = coverage[tiny] >= best[:, None, None]
        similarity = location_confidence(features.float(), cells)  # (N, g*g)
        valid_rows, valid_cols = int(np.ceil(input_hw[0] / stride)), int(np.ceil(input_hw[1] / stride))
        valid = torch.zeros(side, side, dtype=torch.bool, device=similarity.device)
        valid[:valid_rows, :valid_cols] = True
        sim = similarity.masked_fill(~valid.flatten(), float("-inf")).cpu().numpy()  # padding cells never win
        masks_np = masks.cpu().numpy()

    prior_cell = sim.argmax(1)
    to_frame = np.array([width / input_hw[1], height / input_hw[0]])
    prior = np.stack([(prior_cell % side + 0.5) * stride, (prior_cell // side + 0.5) * stride], 1) * to_frame

    rows, cols = pixel_of(grid, height, width)
    inside = masks_np[:, rows, cols]  # (N, K)
    grid_input = grid / to_frame
    grid_cell = (np.floor(grid_input[:, 1] / stride) * side + np.floor(grid_input[:, 0] / stride)).astype(np.int64)
    grid_conf = sim[:, np.clip(grid_cell, 0, side * side - 1)]  # (N, K)
    snapped = snap_to_grid(prior, prior_cell, grid, grid_cell, masks_np)
    snapped_inside = inside[np.arange(n), snapped]

    candidates: list[list[int]] = []
    for k in range(n):
        ranked = [int(i) for i in np.argsort(-grid_conf[k], kind="stable") if inside[k, i] and i != snapped[k]]
        candidates.append(([int(snapped[k])] if snapped_inside[k] else []) + ranked)
    first_conf = np.array([grid_conf[k, c[0]] if c else -np.inf for k, c in enumerate(candidates)])
    grid_index = snapped.astype(np.int64).copy()
    reachable = np.zeros(n, dtype=bool)
    taken: set[int] = set()
    for k in np.argsort(-first_conf, kind="stable"):
        free = next((c for c in candidates[k] if c not in taken), None)
        if free is not None:
            grid_index[k], reachable[k] = free, True
            taken.add(free)
    return Assignment(grid[grid_index].copy(), reachable, grid_index, prior, snapped_inside)


def snap_to_grid(
    prior: np.ndarray, prior_cell: np.ndarray, grid: np.ndarray, grid_cell: np.ndarray, masks: np.ndarray
) -> np.ndarray:
    """Grid index of each prior (N, 2) frame pixels: of the grid points in its feature cell
    (grid_cell (K,) vs prior_cell (N,)), or else of the nearest ones, the one deepest inside its
    mask (N, H, W) by distance to the mask's border; grid order only where that ties too."""
    rows, cols = pixel_of(grid, masks.shape[1], masks.shape[2])
    distance = np.linalg.norm(prior[:, None, :] - grid[None], axis=2)  # (N, K)
    snapped = np.empty(len(prior), dtype=np.int64)
    for k in range(len(prior)):
        options = np.flatnonzero(grid_cell == prior_cell[k])
        if len(options) == 0:
            options = np.flatnonzero(distance[k] <= distance[k].min() * (1 + 1e-9) + 1e-9)
        if len(options) > 1:
            depth = _depth_inside(masks[k], rows[options], cols[options])
            options = options[[int(np.argmax(depth))]]
        snapped[k] = options[0]
    return snapped


def _depth_inside(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Distance of pixels (rows, cols) to the nearest pixel off `mask` (0 off it). Computed on the
    mask's bounding box with a one-pixel margin: the same values as on the whole frame, since a
    margin pixel is never farther than any off-mask pixel beyond it, at a fraction of the cost."""
    depth = np.zeros(len(rows))
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return depth
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    inner = distance_transform_edt(np.pad(mask[y0:y1, x0:x1], 1))[1:-1, 1:-1]
    in_box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    depth[in_box] = inner[rows[in_box] - y0, cols[in_box] - x0]
    return depth


def random_foreground_points(masks: np.ndarray, rng: np.random.Generator) -> Assignment:
    """Ablation: one uniformly random pixel (centre) of each mask, not snapped to the grid."""
    points = np.zeros((len(masks), 2))
    for k, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        i = rng.integers(len(xs))
        points[k] = (xs[i] + 0.5, ys[i] + 0.5)
    return _off_grid(points)


def mask_centre_points(masks: np.ndarray) -> Assignment:
    """Ablation: the mask's centroid, or the mask pixel nearest to it when the centroid is outside."""
    points = np.zeros((len(masks), 2))
    for k, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        cx, cy = xs.mean(), ys.mean()
        if not mask[int(cy), int(cx)]:
            i = np.argmin((xs - cx) ** 2 + (ys - cy) ** 2)
            cx, cy = xs[i], ys[i]
        points[k] = (int(cx) + 0.5, int(cy) + 0.5)
    return _off_grid(points)


def _off_grid(points: np.ndarray) -> Assignment:
    n = len(points)
    return Assignment(points, np.ones(n, bool), np.full(n, -1, np.int64), np.full((n, 2), np.nan), np.ones(n, bool))
