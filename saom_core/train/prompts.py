"""Per-frame training prompts: assigned points for the masks, background points, mask targets."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from saom_core.model.grid import pixel_of
from saom_core.prompting.assignment import (
    Assignment,
    mask_centre_points,
    nearest_neighbour_assignment,
    random_foreground_points,
)


@dataclass
class FramePrompts:
    points: torch.Tensor  # (P, 2) xy frame pixels: positives first, then background points
    class_ids: torch.Tensor  # (P,) int64, 0 for background points
    positive: torch.Tensor  # (P,) bool
    mask_targets: torch.Tensor  # (P_pos, s, s) soft targets at the decoder's resolution
    num_masks: int
    num_unreachable: int
    num_fallback: int  # prior snapped outside its mask; the inside fallback was used


@dataclass
class Geometry:
    """Where a frame sits in the model input: resized size, padded side, decoder mask side."""

    input_hw: tuple[int, int]
    image_size: int
    low_res_side: int


def assign(
    mode: str, features: torch.Tensor, masks: torch.Tensor, grid: np.ndarray, geo: Geometry, rng: np.random.Generator
) -> Assignment:
    if mode == "nearest_neighbour":
        return nearest_neighbour_assignment(features, masks, grid, geo.input_hw, geo.image_size)
    masks_np = masks.cpu().numpy()
    if mode == "random_foreground":
        return random_foreground_points(masks_np, rng)
    if mode == "mask_centre":
        return mask_centre_points(masks_np)
    raise ValueError(f"unknown prompt mode {mode!r}")


def low_res_targets(masks: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(N, H, W) bool -> (N, s, s) fraction of each decoder-resolution pixel the mask covers."""
    scale = geo.low_res_side / geo.image_size
    h, w = max(1, round(geo.input_hw[0] * scale)), max(1, round(geo.input_hw[1] * scale))
    small = F.interpolate(masks[:, None].float(), size=(h, w), mode="area")[:, 0]
    return F.pad(small, (0, geo.low_res_side - w, 0, geo.low_res_side - h))


def build_frame_prompts(
    features: torch.Tensor,
    masks: torch.Tensor,
    class_ids: torch.Tensor,
    grid: np.ndarray,
    geo: Geometry,
    mode: str,
    negatives: int,
    max_masks: int,
    rng: np.random.Generator,
    extra_points: int = 0,
    extra_source: str = "grid",
) -> FramePrompts:
    """Prompts for one frame. Unreachable masks (no grid point inside) get no prompt.

    `extra_points` > 0 adds that many more points inside each kept mask with the same target:
    everything mode prompts every grid point of an object, and a model trained from scratch has
    never seen the others (a pretrained SAM generalises). `extra_source` "grid": random grid points
    of the object other than its assigned one; "pixel": random pixels of the object (what a user
    or a planner clicks: any point of the object, on the grid or not).
    """
    if extra_source not in ("grid", "pixel"):
        raise ValueError(f"unknown extra point source {extra_source!r}")
    assignment = assign(mode, features, masks, grid, geo, rng)
    keep = np.flatnonzero(assignment.reachable)
    if len(keep) > max_masks:
        keep = np.sort(rng.choice(keep, size=max_masks, replace=False))
    height, width = masks.shape[1:]
    rows, cols = pixel_of(grid, height, width)
    inside = masks[:, rows, cols].cpu().numpy() if len(masks) else np.zeros((0, len(grid)), bool)
    free = np.flatnonzero(~inside.any(0))
    background = rng.choice(free, size=min(negatives, len(free)), replace=False) if negatives > 0 else free[:0]
    object_points = [assignment.points[keep]]
    if extra_points > 0:
        extra_of = []
        masks_np = masks.cpu().numpy() if extra_source == "pixel" else None
        for k in keep:
            if masks_np is not None:
                ys, xs = np.nonzero(masks_np[k])
                chosen = rng.choice(len(xs), size=extra_points)
                object_points.append(np.stack([xs[chosen] + 0.5, ys[chosen] + 0.5], 1))
            else:
                others = np.flatnonzero(inside[k])
                others = others[others != assignment.grid_index[k]]
                chosen = rng.choice(others, size=min(extra_points, len(others)), replace=False)
                object_points.append(grid[chosen])
            extra_of += [k] * len(chosen)
        keep = np.concatenate([keep, np.asarray(extra_of, dtype=np.int64)])
    points = np.concatenate([*object_points, grid[background]], 0)
    # Every index lives on the device of the tensor it indexes (a CPU tensor rejects CUDA indices).
    # The returned prompts are on the CPU except the mask targets, which stay on the masks' device.
    keep_t = torch.from_numpy(keep)
    class_ids = class_ids.cpu()
    return FramePrompts(
        points=torch.as_tensor(points, dtype=torch.float32),
        class_ids=torch.cat([class_ids[keep_t], torch.zeros(len(background), dtype=torch.int64)]),
        positive=torch.cat([torch.ones(len(keep), dtype=torch.bool), torch.zeros(len(background), dtype=torch.bool)]),
        mask_targets=low_res_targets(masks[keep_t.to(masks.device)], geo),
        num_masks=len(masks),
        num_unreachable=int((~assignment.reachable).sum()),
        num_fallback=int((assignment.reachable & ~assignment.prior_snapped_inside).sum()),
    )
