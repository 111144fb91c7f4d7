"""Back-projection, outlier rejection and 3D boxes against synthetic depth of known geometry."""
from __future__ import annotations

import numpy as np
import pytest

from saom_core.errors import ConfigError
from saom_core.geometry3d import (
    CameraIntrinsics,
    DepthSettings,
    add_objects3d,
    box_iou_3d,
    depth_in_metres,
    object_from_mask,
    objects_from_masks,
)
from saom_core.infer.types import Instance, Segmentation

CAM = CameraIntrinsics(fx=200.0, fy=210.0, cx=79.5, cy=59.5)
H, W = 120, 160
FLAT = DepthSettings(complete_depth=False, percentiles=(0.0, 100.0))


def _pixels_of_box(x0, x1, y0, y1, z):
    """The mask of the pixels whose rays hit the rectangle [x0, x1] x [y0, y1] at depth z."""
    us, vs = np.meshgrid(np.arange(W), np.arange(H))
    x, y = (us - CAM.cx) * z / CAM.fx, (vs - CAM.cy) * z / CAM.fy
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def test_plane_back_projects_to_its_rectangle():
    depth = np.full((H, W), 2.0, np.float32)
    mask = _pixels_of_box(-0.3, 0.2, -0.1, 0.25, 2.0)
    obj = object_from_mask(mask, depth, CAM, FLAT)
    assert np.allclose(obj.points[:, 2], 2.0)
    # extents within one pixel's footprint (z / f = 1 cm) of the true rectangle
    assert np.allclose(obj.box_min, [-0.3, -0.1, 2.0], atol=0.0101)
    assert np.allclose(obj.box_max, [0.2, 0.25, 2.0], atol=0.0101)
    assert np.allclose(obj.surface_centroid, [-0.05, 0.075, 2.0], atol=0.006)


def test_tilted_plane_keeps_its_slope():
    us, vs = np.meshgrid(np.arange(W), np.arange(H))
    depth = (1.5 + 0.004 * (vs - 60)).astype(np.float32)  # floor-like: farther towards the top ... bottom
    mask = np.zeros((H, W), bool)
    mask[20:100, 40:120] = True
    obj = object_from_mask(mask, depth, CAM, FLAT)
    assert len(obj.points) == mask.sum()  # a smooth slope is no outlier
    assert obj.box_min[2] == pytest.approx(1.5 - 0.004 * 40, abs=1e-5)
    assert obj.box_max[2] == pytest.approx(1.5 + 0.004 * 39, abs=1e-5)


def test_box_front_face_with_background_bleed_and_holes():
    """A 20 x 10 x 15 cm box at 1.5 m, its mask dilated onto the wall behind, some pixels without depth."""
    depth = np.full((H, W), 3.0, np.float32)
    face = _pixels_of_box(-0.1, 0.1, -0.05, 0.05, 1.5)
    depth[face] = 1.5
    mask = np.zeros_like(face)
    vs, us = np.nonzero(face)
    mask[vs.min() - 2:vs.max() + 3, us.min() - 2:us.max() + 3] = True  # 2 px of wall around it
    holes = np.argwhere(face)[::7]
    depth[holes[:, 0], holes[:, 1]] = 0.0
    depth[holes[:3, 0] + 1, holes[:3, 1]] = np.nan
    obj = object_from_mask(mask, depth, CAM, DepthSettings(percentiles=(0.0, 100.0)))
    assert np.all(obj.points[:, 2] == 1.5)  # wall and holes are gone
    assert np.allclose(obj.box_min, [-0.1, -0.05, 1.5], atol=0.008)
    # completed behind the face by the mean visible width (15 cm): the whole box
    assert np.allclose(obj.box_max, [0.1, 0.05, 1.65], atol=0.008)
    assert np.allclose(obj.centre, [0.0, 0.0, 1.575], atol=0.008)
    assert box_iou_3d(obj.box_min, obj.box_max, np.array([-0.1, -0.05, 1.5]), np.array([0.1, 0.05, 1.65])) > 0.85


def test_too_few_valid_pixels_give_no_result_never_a_zero_box():
    depth = np.zeros((H, W), np.float32)
    mask = np.zeros((H, W), bool)
    mask[10:20, 10:20] = True
    depth[10:12, 10:20] = 1.0  # 20 valid pixels of 100
    depth[12:14, 10:20] = np.nan
    depth[14:16, 10:20] = 50.0  # beyond max_depth
    assert object_from_mask(mask, depth, CAM, DepthSettings(min_points=21)) is None
    assert object_from_mask(mask, depth, CAM, DepthSettings(min_points=20)) is not None
    result = objects_from_masks([mask, np.zeros((H, W), bool)], depth, CAM, DepthSettings(min_points=21))
    assert result.objects == [None, None] and result.missing == 2


def test_depth_units_and_bad_input():
    raw = np.array([[1500, 0], [65535, 250]], np.uint16)
    assert np.allclose(depth_in_metres(raw), [[1.5, 0.0], [65.535, 0.25]])
    floats = np.array([[1.5, np.nan], [np.inf, 0.25]], np.float32)
    assert np.allclose(depth_in_metres(floats), [[1.5, 0.0], [0.0, 0.25]])
    assert depth_in_metres(raw, depth_scale=0.0001)[0, 0] == pytest.approx(0.15)
    with pytest.raises(ConfigError, match="unsupported depth type"):
        depth_in_metres(raw.astype(np.int8))
    with pytest.raises(ConfigError, match="single-channel"):
        depth_in_metres(np.zeros((4, 4, 3), np.uint16))
    with pytest.raises(ConfigError, match="focal lengths must be positive"):
        CameraIntrinsics(0.0, 200.0, 80.0, 60.0)
    assert CameraIntrinsics.parse("200,210,79.5,59.5") == CAM
    with pytest.raises(ConfigError, match="4 numbers"):
        CameraIntrinsics.parse("200,210,79.5")


def test_camera_yaml(tmp_path):
    path = tmp_path / "cam.yaml"
    path.write_text("image_width: 160\nimage_height: 120\ncamera_matrix:\n  rows: 3\n  cols: 3\n"
                    "  data: [200.0, 0, 79.5, 0, 210.0, 59.5, 0, 0, 1]\n")
    assert CameraIntrinsics.parse(str(path)) == CAM
    path.write_text("camera_matrix: {data: [1, 2]}\n")
    with pytest.raises(ConfigError, match="9 numbers"):
        CameraIntrinsics.parse(str(path))


def test_add_objects3d_sets_each_instance_and_counts_the_missing():
    depth = np.full((H, W), 2.0, np.float32)
    a, b = np.zeros((H, W), bool), np.zeros((H, W), bool)
    a[10:40, 10:40] = True
    b[50, 50] = True
    seg = Segmentation(H, W, [Instance(m, (0, 0, 1, 1), 1, "x", 1.0, 1.0, 1.0) for m in (a, b)])
    assert add_objects3d(seg, depth, CAM) == 1
    assert seg.instances[0].object3d is not None and seg.instances[1].object3d is None
    with pytest.raises(ConfigError, match="register depth to colour"):
        add_objects3d(seg, depth[:, :100], CAM)
