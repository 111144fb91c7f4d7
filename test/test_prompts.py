"""Per-frame training prompts: assigned points, extra in-object grid points, background points."""
from __future__ import annotations

import numpy as np
import torch

from saom_core.model.grid import grid_points, pixel_of
from saom_core.train.prompts import Geometry, build_frame_prompts, low_res_targets


def frame():
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, 4:30, 4:30] = True
    masks[1, 36:60, 30:62] = True
    return masks, torch.tensor([3, 1])


def build(extra: int, negatives: int = 4, source: str = "grid"):
    masks, class_ids = frame()
    grid = grid_points(8, 64, 64)
    geo = Geometry((64, 64), 64, 16)
    features = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(0))
    prompts = build_frame_prompts(features, masks, class_ids, grid, geo, "nearest_neighbour", negatives, 32,
                                  np.random.default_rng(0), extra_points=extra, extra_source=source)
    return prompts, masks, grid


def test_extra_points_lie_inside_their_object_with_its_target_and_class():
    prompts, masks, grid = build(extra=2)
    pos = prompts.positive.numpy()
    assert pos.sum() == 6 and (~pos).sum() == 4  # 2 objects x (1 assigned + 2 extra), 4 background points
    points = prompts.points.numpy()
    rows, cols = pixel_of(points[pos], 64, 64)
    _, frame_classes = frame()
    own_targets = low_res_targets(masks, Geometry((64, 64), 64, 16))
    assert not torch.equal(own_targets[0], own_targets[1]), "the check needs objects with different targets"
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        containing = torch.nonzero(masks[:, r, c]).flatten().tolist()
        assert len(containing) == 1, "an object's prompt lies inside exactly one object"
        obj = containing[0]
        assert prompts.class_ids[k] == frame_classes[obj], "the prompt's class is the class of the object it lies in"
        assert torch.equal(prompts.mask_targets[k], own_targets[obj]), (
            "the prompt's target is the mask of the object it lies in"
        )
    assert len({tuple(p) for p in points[pos]}) == 6, "no grid point is used twice"
    assert all(any(np.all(grid == p, axis=1)) for p in points), "every prompt is a grid point"
    bg_rows, bg_cols = pixel_of(points[~pos], 64, 64)
    assert not masks[:, bg_rows, bg_cols].any(), "background points lie off every object"
    assert (prompts.class_ids[~torch.from_numpy(pos)] == 0).all()


def test_without_extra_points_one_prompt_per_object():
    prompts, _, _ = build(extra=0, negatives=0)
    assert prompts.positive.all() and len(prompts.points) == 2


def test_extra_pixel_points_lie_inside_their_object_off_the_grid():
    prompts, masks, grid = build(extra=3, negatives=0, source="pixel")
    assert prompts.positive.all() and len(prompts.points) == 8  # 2 objects x (1 assigned + 3 extra)
    rows, cols = pixel_of(prompts.points.numpy(), 64, 64)
    owner = (prompts.class_ids == 1).long().numpy()  # object 0 has class 3, object 1 class 1
    assert masks[owner, rows, cols].all(), "each extra point lies inside its own object"
    extra = prompts.points.numpy()[2:]
    assert not all(any(np.all(grid == p, axis=1)) for p in extra), "pixel points are not limited to the grid"
