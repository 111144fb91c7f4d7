"""Depth, intrinsics and 3D ground truth of the PyBullet collector; trajectory mode; old datasets."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pybullet
import pytest
from pybullet_utils.bullet_client import BulletClient

from saom_core.cli import main
from saom_core.data.check import check_dataset
from saom_core.data.classes import ClassList
from saom_core.data.collect import collect_dataset
from saom_core.data.collect.pybullet import (
    PyBulletCollector,
    depth_from_zbuffer,
    intrinsics_from_projection,
    world_to_optical,
)
from saom_core.data.reader import SaomDataset
from saom_core.errors import DatasetError


def _render_sphere(centre_world, size=128, radius=0.03):
    """A lone sphere seen by a tilted camera: (mask, depth in metres, intrinsics, world->optical)."""
    bc = BulletClient(connection_mode=pybullet.DIRECT)
    try:
        vis = bc.createVisualShape(pybullet.GEOM_SPHERE, radius=radius)
        bc.createMultiBody(0, -1, vis, centre_world)
        view = bc.computeViewMatrix([0.1, -0.2, 1.0], [0.6, 0.3, 0.6], [0, 0, 1])
        proj = bc.computeProjectionMatrixFOV(60.0, 1.0, 0.05, 15.0)
        _, _, _, zbuf, seg = bc.getCameraImage(size, size, view, proj, renderer=pybullet.ER_TINY_RENDERER)
    finally:
        bc.disconnect()
    mask = np.reshape(seg, (size, size)) == 0
    depth = depth_from_zbuffer(np.reshape(np.asarray(zbuf), (size, size)), 0.05, 15.0)
    return mask, depth, intrinsics_from_projection(proj, size, size), world_to_optical(view)


@pytest.mark.parametrize("centre", [[0.6, 0.3, 0.6], [0.75, 0.2, 0.7], [0.4, 0.35, 0.5], [0.7, 0.45, 0.5]])
def test_intrinsics_project_a_known_point_onto_its_pixels(centre):
    mask, depth, k, to_cam = _render_sphere(centre)
    assert mask.sum() > 20
    x, y, z = to_cam[:3, :3] @ np.asarray(centre) + to_cam[:3, 3]
    assert z > 0  # in front of the camera: the optical frame's z looks forward
    u, v = k["fx"] * x / z + k["cx"], k["fy"] * y / z + k["cy"]
    vs, us = np.nonzero(mask)
    assert abs(us.mean() - u) < 0.25 and abs(vs.mean() - v) < 0.25  # x right, y down, pixel centres at i
    # the depth of the sphere's nearest pixels is its centre's depth minus about the radius
    assert abs(np.percentile(depth[mask], 2) - (z - 0.03)) < 0.01


@pytest.fixture(scope="module")
def frames():
    with PyBulletCollector(ClassList.from_yaml("pybullet"), size=128, min_area=20) as collector:
        return collector.collect_scene(2, seed=0)


def test_depth_and_ground_truth_agree_with_the_masks(frames):
    checked = 0
    for frame in frames:
        k = frame.meta["intrinsics"]
        assert frame.depth.shape == (128, 128) and frame.depth.dtype == np.float32
        assert 0.05 <= frame.depth.min() and frame.depth.max() < 15.0
        assert len(frame.objects3d) == len(frame.masks)
        for mask, obj in zip(frame.masks, frame.objects3d, strict=True):
            x, y, z = obj["position"]
            assert z > 0 and min(obj["extents"]) > 0
            assert abs(np.linalg.norm(obj["orientation"]) - 1) < 1e-4
            vs, us = np.nonzero(mask)
            # the visible surface lies within the object's box (its half diagonal) of its centre
            pts_z = frame.depth[vs, us]
            pts = np.stack([(us - k["cx"]) * pts_z / k["fx"], (vs - k["cy"]) * pts_z / k["fy"], pts_z], 1)
            half_diagonal = np.linalg.norm(obj["extents"]) / 2
            assert np.linalg.norm(np.median(pts, 0) - [x, y, z]) < half_diagonal + 0.01
            checked += 1
    assert checked >= 4


def test_trajectory_moves_the_camera_in_small_steps_and_keeps_the_objects():
    with PyBulletCollector(ClassList.from_yaml("pybullet"), size=96, min_area=20, trajectory=5) as collector:
        traj = collector.collect_scene(0, seed=0)
    assert [f.meta["trajectory_step"] for f in traj] == list(range(5))
    yaws = [f.meta["agent_pose"]["yaw"] for f in traj]
    assert all(0 < abs((b - a + 180) % 360 - 180) <= 3 for a, b in itertools.pairwise(yaws))
    ids = [set(f.meta["instance_ids"]) for f in traj]
    assert len(set.intersection(*ids)) >= 2  # the same bodies stay in view: tracks exist
    with PyBulletCollector(ClassList.from_yaml("pybullet"), size=96, min_area=20) as collector:
        views = collector.collect_scene(0, seed=0)
    assert traj[0].meta["light"] == views[0].meta["light"]  # the same random scene, only the camera path differs


def test_dataset_round_trip_check_and_cli(tmp_path, capsys):
    out = tmp_path / "traj"
    args = ["collect", "--scenes", "2", "--size", "64", "--min-area", "10", "--trajectory", "3", "--out", str(out)]
    assert main(args) == 0
    dataset = SaomDataset(out)
    assert len(dataset) == 6 and dataset.has_depth
    sample = dataset[0]
    assert sample.depth.shape == (64, 64) and sample.depth.dtype == np.float32 and sample.intrinsics is not None
    assert len(sample.objects3d) == len(sample.masks) and all(o is not None for o in sample.objects3d)
    report, _ = check_dataset(out, progress=False)
    assert report.depth_frames == 6 and report.objects3d == sum(report.masks.values())
    capsys.readouterr()
    assert main(["dataset", "check", str(out), "--quiet"]) == 0
    assert "depth: 6 of 6 frames" in capsys.readouterr().out

    coco = json.loads((out / "annotations.json").read_text())
    coco["annotations"][0]["object3d"]["extents"][0] = 0.0
    (out / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DatasetError, match="non-positive extent"):
        check_dataset(out, progress=False)


def test_old_datasets_without_depth_still_load(tmp_path):
    out = tmp_path / "old"
    collect_dataset("pybullet", scenes=1, out=out, size=48, min_area=5, progress=False)
    coco = json.loads((out / "annotations.json").read_text())
    for image in coco["images"]:
        image.pop("depth_file_name")
        image["saom"].pop("intrinsics")
    for ann in coco["annotations"]:
        ann.pop("object3d")
    (out / "annotations.json").write_text(json.dumps(coco))
    dataset = SaomDataset(out)
    assert not dataset.has_depth and dataset[0].depth is None and dataset[0].intrinsics is None
    assert all(o is None for o in dataset[0].objects3d)
    report, _ = check_dataset(out, progress=False)
    assert report.depth_frames == 0


def test_depth_png_is_millimetres_and_missing_depth_is_zero(tmp_path):
    import cv2

    from saom_core.data.format import encode_depth_png

    depth = np.array([[0.5, math.nan], [0.0, 70.0]], dtype=np.float32)
    path = tmp_path / "d.png"
    path.write_bytes(encode_depth_png(depth))
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.tolist() == [[500, 0], [0, 0]]
