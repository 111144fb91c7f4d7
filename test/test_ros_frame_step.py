"""The node's per-frame object step (saom_ros.frame_step: score filter, 3D, tracker, published ids)
and its colour/depth pairing (saom_ros.pairing), with rclpy's message classes, without a running node."""
from __future__ import annotations

import numpy as np
import pytest

from saom_ros.testing import FakeSegmenter, isolate_ros_env

isolate_ros_env()

from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from saom_core.geometry3d import DepthSettings  # noqa: E402
from saom_core.infer.types import Segmentation  # noqa: E402
from saom_core.track import TrackerSettings  # noqa: E402
from saom_ros.conversions import label_image, make_outputs  # noqa: E402
from saom_ros.frame_step import FrameObjectStep  # noqa: E402
from saom_ros.msgtypes import rclpy_types  # noqa: E402
from saom_ros.objects3d import depth_to_message  # noqa: E402
from saom_ros.pairing import CAMERA_INFO, COLOR, DEPTH, MessageFiltersPairing, StampSyncPairing  # noqa: E402  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")]
T = rclpy_types()
H, W = 48, 64


def _header(i: int) -> Header:
    return Header(stamp=Time(sec=100 + i, nanosec=0), frame_id="cam")


def _info(i: int = 0, fx: float = 50.0, width: int = W) -> CameraInfo:
    return CameraInfo(header=_header(i), width=width, height=H, k=[fx, 0.0, 31.5, 0.0, 50.0, 23.5, 0.0, 0.0, 1.0])


def _seg(n: int = 3) -> Segmentation:
    return FakeSegmenter(n_instances=n).segment(np.zeros((H, W, 3), np.uint8))


def _step(min_hits: int = 2) -> FrameObjectStep:
    return FrameObjectStep(TrackerSettings(min_hits=min_hits, max_misses=1), DepthSettings())


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_plane_depth_gives_3d_at_its_distance_and_ids_are_track_ids(encoding):
    step = _step()
    depth = depth_to_message(T, _header(0), np.full((H, W), 1.5, np.float32), encoding)
    found = step(_seg(), 0.0, "cam", depth, _info())
    assert found.with_3d and not found.problem and found.without_3d == 0
    published = found.segmentation.instances
    assert [i.track_id for i in published] == [1, 2, 3]  # the first frame is confirmed at once
    for inst in published:
        assert inst.object3d.surface_centroid[2] == pytest.approx(1.5, abs=1e-3)
        x0, y0, x1, y1 = inst.box_xyxy  # the box spans the mask's pixels back-projected at 1.5 m
        assert inst.object3d.size[0] == pytest.approx((x1 - x0) * 1.5 / 50.0, rel=0.05)
    # every output names an instance by its track id: Detection2D.id == its pixels' value in the mask
    out = make_outputs(T, _header(0), found.segmentation)
    labels = label_image(found.segmentation)
    for det, inst in zip(out.detections.detections, published, strict=True):
        assert det.id == str(inst.track_id)
        assert np.all(labels[inst.mask & (labels > 0)] <= inst.track_id)  # the better instance wins overlaps
        assert np.any(labels == inst.track_id)
    assert step.counts.frames_3d == 1


def test_ids_persist_new_objects_wait_for_min_hits_and_label_image_is_keyed_by_track_id():
    step = _step(min_hits=2)
    for _ in range(3):  # a static scene keeps its ids
        found = step(_seg(2), 0.0, "cam")
        assert [i.track_id for i in found.segmentation.instances] == [1, 2]
    # frame 4: a third object appears; tentative, so published nowhere yet
    found = step(_seg(3), 0.0, "cam")
    assert [i.track_id for i in found.segmentation.instances] == [1, 2]
    assert set(np.unique(label_image(found.segmentation))) == {0, 1, 2}
    found = step(_seg(3), 0.0, "cam")
    assert [i.track_id for i in found.segmentation.instances] == [1, 2, 3]
    # the first object disappears: the others keep their ids, and the mask values follow them
    seg = _seg(3)
    seg.instances = seg.instances[1:]
    found = step(seg, 0.0, "cam")
    assert [i.track_id for i in found.segmentation.instances] == [2, 3]
    labels = label_image(found.segmentation)
    assert set(np.unique(labels)) == {0, 2, 3}
    assert np.all(labels[seg.instances[1].mask & ~seg.instances[0].mask] == 3)
    out = make_outputs(T, _header(5), found.segmentation)
    assert [d.id for d in out.detections.detections] == ["2", "3"]


def test_score_threshold_applies_before_tracking():
    step = _step(min_hits=1)
    found = step(_seg(3), 0.80, "cam")  # the fake's scores: 0.855, 0.765, 0.675
    assert [i.track_id for i in found.segmentation.instances] == [1]


@pytest.mark.parametrize("case", ["size", "encoding", "focal"])
def test_unusable_depth_gives_a_reason_and_2d_only(case):
    step = _step()
    depth = depth_to_message(T, _header(0), np.full((H, W), 1.0, np.float32), "32FC1")
    info = _info()
    if case == "size":
        depth = depth_to_message(T, _header(0), np.full((H // 2, W // 2), 1.0, np.float32), "32FC1")
    elif case == "encoding":
        depth.encoding = "rgb8"
    else:
        info = _info(fx=0.0)
    found = step(_seg(), 0.0, "cam", depth, info)
    assert not found.with_3d and found.problem
    assert {"size": "colour image is", "encoding": "not supported", "focal": "focal length"}[case] in found.problem
    assert all(i.object3d is None for i in found.segmentation.instances)
    assert len(found.segmentation.instances) == 3  # still published in 2D
    assert step.counts.frames_bad_depth == 1 and step.counts.frames_3d == 0


def test_frames_without_depth_are_counted_when_depth_is_expected():
    step = _step()
    step(_seg(), 0.0, "cam", depth_expected=True)
    step(_seg(), 0.0, "cam")
    assert step.counts.frames_without_depth == 1
    assert "sync_slop" in step.counts.last_problem


def test_few_depth_pixels_give_no_3d_for_that_object_only():
    step = _step()
    depth = np.full((H, W), 1.0, np.float32)
    seg = _seg()
    depth[seg.instances[2].mask] = 0.0  # no depth on the third object (the others reach beyond it)
    found = step(seg, 0.0, "cam", depth_to_message(T, _header(0), depth, "32FC1"), _info())
    objects = [i.object3d for i in found.segmentation.instances]
    assert found.with_3d and found.without_3d == 1
    assert objects[0] is not None and objects[1] is not None and objects[2] is None


# ---- pairing ---------------------------------------------------------------------------------------

def _pairings():
    out = [StampSyncPairing]
    try:
        import message_filters  # noqa: F401
        out.append(MessageFiltersPairing)
    except ImportError:
        pass
    return out


def _image(i: int, nanosec: int = 0) -> Image:
    return Image(header=Header(stamp=Time(sec=100 + i, nanosec=nanosec), frame_id="cam"), height=1, width=1)


@pytest.mark.parametrize("pairing_cls", _pairings(), ids=lambda c: c.name)
def test_pairing_gives_every_colour_frame_out_once_with_or_without_depth(pairing_cls):
    pairing = pairing_cls(slop=0.02, max_wait=0.5)
    out = []
    for i in range(3):
        out += pairing.add(COLOR, _image(i))
        if i != 1:  # frame 1's depth never comes
            out += pairing.add(DEPTH, _image(i, nanosec=5_000_000))  # 5 ms later: within slop
            out += pairing.add(CAMERA_INFO, _info(i))
    out += pairing.expire((103) * 10**9)
    assert [m.stamp_ns // 10**9 for m in out] == [100, 101, 102]
    assert [m.complete for m in out] == [True, False, True]
    assert out[0].depth.header.stamp.nanosec == 5_000_000 and out[2].camera_info.header.stamp.sec == 102


@pytest.mark.parametrize("pairing_cls", _pairings(), ids=lambda c: c.name)
def test_pairing_expires_frames_when_depth_stops(pairing_cls):
    pairing = pairing_cls(slop=0.02, max_wait=0.3)
    assert pairing.add(COLOR, _image(0)) == []
    assert pairing.expire(100 * 10**9 + 200_000_000) == []  # 0.2 s: still waiting
    expired = pairing.expire(100 * 10**9 + 400_000_000)
    assert len(expired) == 1 and not expired[0].complete


@pytest.mark.parametrize("stride", [2, 3])
def test_depth_stride_samples_the_same_geometry(stride):
    """A tilted plane: the 3D from every stride-th pixel matches the full one to about a sample's footprint."""
    depth = np.repeat(np.linspace(0.8, 1.6, H, dtype=np.float32)[:, None], W, axis=1)
    msg = depth_to_message(T, _header(0), depth, "32FC1")
    full = FrameObjectStep(TrackerSettings(), DepthSettings())(_seg(), 0.0, "cam", msg, _info())
    sampled = FrameObjectStep(TrackerSettings(), DepthSettings(stride=stride))(_seg(), 0.0, "cam", msg, _info())
    assert sampled.with_3d
    for a, b in zip(full.segmentation.instances, sampled.segmentation.instances, strict=True):
        n_full, n_sampled = len(a.object3d.points), len(b.object3d.points)
        assert n_sampled == pytest.approx(n_full / stride**2, rel=0.25)
        footprint = stride * float(b.object3d.box_max[2]) / 50.0
        np.testing.assert_allclose(b.object3d.box_min, a.object3d.box_min, atol=footprint)
        np.testing.assert_allclose(b.object3d.box_max, a.object3d.box_max, atol=footprint)
        np.testing.assert_allclose(b.object3d.surface_centroid, a.object3d.surface_centroid, atol=footprint / 2)
