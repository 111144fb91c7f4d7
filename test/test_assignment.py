"""Nearest neighbour assignment (the paper's Algorithm 1) and the ablation prompts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator
from torch.nn import functional as F

from saom_core.infer.generator import EverythingGenerator, GeneratorConfig
from saom_core.model.architectures import get_config
from saom_core.model.grid import grid_points, pixel_of
from saom_core.model.saom import build_model
from saom_core.prompting import assignment
from saom_core.prompting.assignment import (
    mask_centre_points,
    nearest_neighbour_assignment,
    random_foreground_points,
)

SIDE = 16  # feature grid of a 256 px model input (patch 16)
IMAGE_SIZE = 256


def colour_features(image: np.ndarray, input_hw: tuple[int, int]) -> torch.Tensor:
    """A stand-in encoder: per-cell mean colour (+ a constant channel) of the resized, padded frame."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=input_hw, mode="bilinear", align_corners=False)
    x = F.pad(x, (0, IMAGE_SIZE - input_hw[1], 0, IMAGE_SIZE - input_hw[0]))
    pooled = F.adaptive_avg_pool2d(x, SIDE)[0]
    return torch.cat([pooled - 0.5, torch.full((1, SIDE, SIDE), 0.05)])


def input_hw(height: int, width: int) -> tuple[int, int]:
    scale = IMAGE_SIZE / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def test_picks_the_grid_point_nearest_to_the_constructed_prior():
    height = width = 224
    features = torch.zeros(4, SIDE, SIDE)
    features[3] = 1.0  # background direction everywhere
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[0, 84:168, 98:182] = True  # feature cells rows 6..11, cols 7..12 (14 px per cell at 224 px)
    features[:, 6:12, 7:13] = torch.tensor([1.0, -0.3, 0.0, 0.0])[:, None, None]
    # The pooled target (0.5 max + 0.5 mean) leans towards the one cell with +0.3, the mask's top
    # left corner cell: it is the prior.
    features[:, 6, 7] = torch.tensor([1.0, 0.3, 0.0, 0.0])
    grid = grid_points(32, height, width)
    result = nearest_neighbour_assignment(features, mask, grid, (256, 256), IMAGE_SIZE)
    cell_px = 224 / SIDE
    expected_prior = np.array([(7 + 0.5) * cell_px, (6 + 0.5) * cell_px])
    np.testing.assert_allclose(result.prior[0], expected_prior)
    # The cell holds 4 grid points, equally near the prior; the lower right one is deepest inside
    # the mask (11 px from its border, the upper left one 4 px).
    expected_point = expected_prior + np.array([0.25, 0.25]) * cell_px
    np.testing.assert_allclose(result.points[0], expected_point)
    assert result.grid_index[0] == int(np.linalg.norm(grid - expected_point, axis=1).argmin())
    assert result.reachable[0] and result.prior_snapped_inside[0]


@pytest.mark.parametrize("size", [(224, 224), (480, 640), (301, 451)])
def test_every_grid_point_can_be_the_snapped_prior(size, monkeypatch):
    """16x16 feature cells, a 32x32 grid (the tiny config): a cell holds several grid points (at
    224 px every cell centre is equidistant from 4), so the object must decide, not the grid's
    order. For each grid point: a map that peaks on its cell and a small object around it; the
    prior must snap to it directly."""
    height, width = size
    hw = input_hw(height, width)
    grid = grid_points(32, height, width)
    scale = np.array([hw[1] / width, hw[0] / height])
    cell = np.floor(grid * scale / (IMAGE_SIZE / SIDE)).astype(int)  # (K, 2) xy feature cell of each grid point
    peak = {"k": 0}

    def peaked_map(features, cells):
        sim = torch.zeros(1, SIDE, SIDE)
        sim[0, cell[peak["k"], 1], cell[peak["k"], 0]] = 1.0
        return sim.flatten(1)

    monkeypatch.setattr(assignment, "location_confidence", peaked_map)
    spacing = np.array([width, height]) / 32
    features = torch.zeros(4, SIDE, SIDE)
    wrong = []
    for k, (x, y) in enumerate(grid):
        peak["k"] = k
        mask = torch.zeros(1, height, width, dtype=torch.bool)
        x0, x1 = int(x - 0.8 * spacing[0]), int(np.ceil(x + 0.8 * spacing[0]))
        y0, y1 = int(y - 0.8 * spacing[1]), int(np.ceil(y + 0.8 * spacing[1]))
        mask[0, max(y0, 0) : y1, max(x0, 0) : x1] = True
        result = nearest_neighbour_assignment(features, mask, grid, hw, IMAGE_SIZE)
        if not (result.prior_snapped_inside[0] and result.grid_index[0] == k):
            wrong.append(k)
    assert not wrong, f"{len(wrong)} of {len(grid)} grid points never the snapped prior"


@pytest.mark.parametrize("size", [(224, 224), (240, 320), (37, 100)])
def test_prior_lands_inside_masks_of_synthetic_frames(size):
    rng = np.random.default_rng(1)
    height, width = size
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    masks = np.zeros((3, height, width), dtype=bool)
    colours = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]
    boxes = [(0.1, 0.1, 0.45, 0.5), (0.55, 0.15, 0.9, 0.45), (0.3, 0.6, 0.8, 0.95)]
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        ys, xs = slice(int(y0 * height), int(y1 * height)), slice(int(x0 * width), int(x1 * width))
        masks[k, ys, xs] = True
        image[ys, xs] = colours[k]
    image = (image.astype(int) + rng.integers(-10, 10, image.shape)).clip(0, 255).astype(np.uint8)
    hw = input_hw(height, width)
    grid = grid_points(32, height, width)
    result = nearest_neighbour_assignment(colour_features(image, hw), torch.from_numpy(masks), grid, hw, IMAGE_SIZE)
    rows, cols = pixel_of(result.points, height, width)
    assert result.reachable.all()
    assert masks[np.arange(3), rows, cols].all(), "every prompt must lie inside its own mask"
    prior_rows, prior_cols = pixel_of(result.prior, height, width)
    assert masks[np.arange(3), prior_rows, prior_cols].all(), "the location prior itself lies inside the mask"


@pytest.mark.parametrize("size", [(224, 224), (480, 640), (37, 100)])
def test_assigned_points_are_exactly_the_generators_grid_points(size):
    """Training prompts must be points the everything-mode generator actually prompts with: SAM's
    own grid (SamAutomaticMaskGenerator.point_grids, normalised xy) scaled to the frame."""
    height, width = size
    model = build_model(get_config("test"))
    stock_points = SamAutomaticMaskGenerator(model, points_per_side=32).point_grids[0] * np.array([width, height])
    generator_points, _ = EverythingGenerator(model, GeneratorConfig(points_per_side=32))._grid(height, width)
    np.testing.assert_allclose(generator_points, stock_points, rtol=0, atol=1e-9)
    generator_points = stock_points
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, : height // 2, : width // 2] = True
    masks[1, height // 2 :, width // 3 :] = True
    features = torch.randn(8, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    result = nearest_neighbour_assignment(
        features, masks, grid_points(32, height, width), input_hw(height, width), IMAGE_SIZE
    )
    for point in result.points:
        assert np.any(np.all(generator_points == point, axis=1)), f"{point} is not a generator grid point"


def test_prior_on_a_look_alike_falls_back_to_the_best_grid_point_inside_the_mask():
    height = width = 224
    image = np.full((height, width, 3), 40, dtype=np.uint8)
    masks = np.zeros((2, height, width), dtype=bool)
    masks[0, 20:80, 20:80] = True
    masks[1, 120:200, 120:200] = True
    image[masks[0]] = (200, 40, 40)
    image[masks[1]] = (200, 40, 40)  # identical look-alike
    hw = (256, 256)
    features = colour_features(image, hw)
    features[:, 11, 11] *= 1.5  # the brightest "mug" cell sits in the second object
    result = nearest_neighbour_assignment(
        features, torch.from_numpy(masks), grid_points(32, height, width), hw, IMAGE_SIZE
    )
    rows, cols = pixel_of(result.points, height, width)
    assert masks[[0, 1], rows, cols].all()
    assert len(set(result.grid_index.tolist())) == 2


def test_object_thinner_than_the_grid_is_unreachable():
    height = width = 224
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 50:150, 50:150] = True
    masks[1, 10:12, 100:200] = True  # 2 px tall; grid rows are at 3.5, 10.5, 17.5, ... -> row 10.5 hits it
    masks[1, 10:12] = False
    masks[1, 12:14, 100:200] = True  # now between grid rows 10.5 and 17.5: no grid point inside
    result = nearest_neighbour_assignment(
        torch.randn(8, SIDE, SIDE), masks, grid_points(32, height, width), (256, 256), IMAGE_SIZE
    )
    assert result.reachable.tolist() == [True, False]


def test_overlapping_masks_never_share_a_grid_point():
    height = width = 64
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 10:40, 10:40] = True
    masks[1, 10:40, 10:40] = True  # identical masks claim the same best point
    result = nearest_neighbour_assignment(
        torch.randn(4, SIDE, SIDE), masks, grid_points(8, height, width), (256, 256), IMAGE_SIZE
    )
    assert result.reachable.all()
    assert result.grid_index[0] != result.grid_index[1]


def test_ablation_prompts_lie_inside_their_masks():
    masks = np.zeros((2, 50, 60), dtype=bool)
    masks[0, 5:20, 5:30] = True
    masks[1, 30:45, 10:50] = True
    masks[1, 35:40, 25:35] = False  # a hole at the centroid
    for result in (random_foreground_points(masks, np.random.default_rng(0)), mask_centre_points(masks)):
        rows, cols = pixel_of(result.points, 50, 60)
        assert masks[[0, 1], rows, cols].all()
        assert (result.grid_index == -1).all()


def test_depth_inside_on_the_bounding_box_equals_the_whole_frame_transform():
    """The snapping rule's depth is computed on each mask's bounding box for speed: same values."""
    from scipy.ndimage import distance_transform_edt

    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = np.zeros((60, 70), bool)
        for _ in range(int(rng.integers(1, 4))):
            y, x = int(rng.integers(0, 60)), int(rng.integers(0, 70))
            mask[y : y + int(rng.integers(1, 30)), x : x + int(rng.integers(1, 30))] = rng.random() < 0.8
        rows, cols = rng.integers(0, 60, 50), rng.integers(0, 70, 50)
        whole = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][rows, cols]
        assert np.array_equal(assignment._depth_inside(mask, rows, cols), whole)
