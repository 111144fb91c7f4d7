"""saom_ros.objects3d with rclpy's real message classes (and rosbags' for serialisation), and the
ROS-free stamp synchroniser saom_ros.pairing.StampSync."""
from __future__ import annotations

import numpy as np
import pytest

from saom_ros.testing import isolate_ros_env

isolate_ros_env()

from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from saom_core.geometry3d import CameraIntrinsics  # noqa: E402
from saom_core.infer.types import Instance, Segmentation  # noqa: E402
from saom_ros.msgtypes import rclpy_types, rosbags_types, typestore  # noqa: E402
from saom_ros.objects3d import (  # noqa: E402
    POINT_DTYPE,
    DepthInputError,
    camera_from_info,
    depth_from_message,
    depth_to_message,
    frame_to_3d,
    make_outputs_3d,
    rclpy_types_3d,
    rosbags_types_3d,
    transform_from_msg,
    unrectified_warning,
)
from saom_ros.pairing import StampSync  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")]
M = rclpy_types_3d()
T = rclpy_types()
H, W = 48, 64
CAM = CameraIntrinsics(60.0, 60.0, 31.5, 23.5)


FRAME = "camera_color_optical_frame"


def _header(sec=3, nanosec=4):
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=FRAME)


def _info(width=W, height=H, fx=CAM.fx):
    return CameraInfo(header=_header(), width=width, height=height, distortion_model="plumb_bob",
                      k=[fx, 0.0, CAM.cx, 0.0, CAM.fy, CAM.cy, 0.0, 0.0, 1.0])


def _seg() -> Segmentation:
    a, b, c = (np.zeros((H, W), bool) for _ in range(3))
    a[10:20, 10:30] = True
    b[25:40, 35:60] = True
    c[0, 0] = True  # too small for 3D
    insts = [Instance(m, (0, 0, 1, 1), k, f"class{k}", 0.9, 1.0, 1.0) for k, m in ((2, a), (5, b), (1, c))]
    insts[0].track_id, insts[1].track_id = 17, 4  # tracked: ids are track ids
    return Segmentation(H, W, insts)


def _image():
    """The colour frame: the first object's pixels (10, 20, 30), the second's (200, 100, 50)."""
    image = np.zeros((H, W, 3), np.uint8)
    image[10:20, 10:30] = (10, 20, 30)
    image[25:40, 35:60] = (200, 100, 50)
    return image


def _depth():
    depth = np.full((H, W), 2.0, np.float32)
    depth[25:40, 35:60] = 1.25
    return depth


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_outputs_with_real_messages_and_colour_header(encoding):
    seg = _seg()
    depth_msg = depth_to_message(T, _header(), _depth(), encoding)
    assert isinstance(depth_msg, Image)
    assert frame_to_3d(seg, depth_msg, _info(), FRAME) == 1  # the one-pixel instance gets no 3D
    header = _header()
    out = make_outputs_3d(M, header, seg, _image())

    dets = out.detections.detections
    assert out.detections.header == header and [d.id for d in dets] == ["17", "4"]
    assert [d.results[0].hypothesis.class_id for d in dets] == ["2", "5"]
    assert dets[1].bbox.center.position.z == pytest.approx(1.25 + 0.5 * dets[1].bbox.size.z, abs=1e-3)
    assert dets[1].bbox.size.x == pytest.approx(25 * 1.25 / 60.0, abs=1e-3)  # 25 px at 1.25 m, f = 60 px
    assert all(d.bbox.size.x > 0 and d.bbox.size.y > 0 and d.bbox.size.z > 0 for d in dets)

    cloud = out.cloud
    assert cloud.header == header and cloud.height == 1 and cloud.width == 200 + 375
    # PCL's PointXYZRGBL names and types (PointField UINT32 = 6, FLOAT32 = 7), plus class_id
    assert [(f.name, f.datatype) for f in cloud.fields] == [("x", 7), ("y", 7), ("z", 7), ("rgb", 7), ("label", 6),
                                                            ("class_id", 4)]
    points = np.frombuffer(bytes(cloud.data), dtype=POINT_DTYPE)
    assert set(np.unique(points["label"])) == {17, 4} and set(points[points["label"] == 4]["class_id"]) == {5}
    assert np.allclose(points[points["label"] == 4]["z"], 1.25, atol=1e-3)
    packed = points["rgb"].view(np.uint32)  # 0x00RRGGBB, as pcl::PointXYZRGB packs it
    assert set(packed[points["label"] == 17]) == {(10 << 16) | (20 << 8) | 30}
    assert set(packed[points["label"] == 4]) == {(200 << 16) | (100 << 8) | 50}

    # the pose is the completed box centre; its covariance comes from the points' spread
    cov = np.array(dets[1].results[0].pose.covariance).reshape(6, 6)
    assert dets[1].results[0].pose.pose == dets[1].bbox.center
    assert cov[0, 0] == pytest.approx((25 * 1.25 / 60.0) ** 2 / 12, rel=0.1)  # uniform over the 25 px width
    assert cov[2, 2] == pytest.approx((0.5 * dets[1].bbox.size.z) ** 2, rel=0.01)  # the centre is behind the surface
    assert np.all(np.diag(cov)[3:] > 1.0)  # orientation unknown

    markers = out.markers.markers
    assert markers[0].action == 3  # DELETEALL first: rviz shows this frame's objects only
    assert [(m.ns, m.id) for m in markers[1:]] == [("boxes", 17), ("labels", 17), ("boxes", 4), ("labels", 4)]
    assert all(m.header == header for m in markers) and markers[2].text == "class2 17"


def test_rosbags_classes_serialise_the_same_outputs():
    from saom_ros.objects3d import make_outputs_3d as build

    store = typestore()
    Tb = rosbags_types()
    seg = _seg()
    frame_to_3d(seg, depth_to_message(Tb, _header_b(Tb), _depth(), "16UC1"), _info(), FRAME)
    out = build(rosbags_types_3d(), _header_b(Tb), seg, _image())
    for msg in (out.detections, out.cloud, out.markers):
        raw = store.serialize_cdr(msg, msg.__msgtype__)
        assert store.deserialize_cdr(raw, msg.__msgtype__).__msgtype__ == msg.__msgtype__


def _header_b(Tb):
    return Tb.Header(stamp=Tb.Time(sec=3, nanosec=4), frame_id=FRAME)


def test_bad_depth_and_camera_info_give_clear_errors():
    good = depth_to_message(T, _header(), _depth(), "16UC1")
    with pytest.raises(DepthInputError, match="depth image is 32x48 but the colour image is 64x48"):
        depth_from_message(depth_to_message(T, _header(), _depth()[:, :32], "16UC1"), W, H)
    bad = depth_to_message(T, _header(), _depth(), "16UC1")
    bad.encoding = "rgb8"
    with pytest.raises(DepthInputError, match="encoding 'rgb8' is not supported"):
        depth_from_message(bad, W, H)
    with pytest.raises(DepthInputError, match="no usable focal length"):
        camera_from_info(_info(fx=0.0), W, H)
    with pytest.raises(DepthInputError, match="camera_info is for 640x480"):
        camera_from_info(_info(width=640, height=480), W, H)
    seg = _seg()
    with pytest.raises(DepthInputError):
        frame_to_3d(seg, good, _info(fx=0.0), FRAME)
    assert all(i.object3d is None for i in seg.instances)  # nothing half-set
    assert np.allclose(depth_from_message(good, W, H), _depth())


def test_outputs_in_a_target_frame_and_empty_ones():
    from geometry_msgs.msg import TransformStamped

    seg = _seg()
    frame_to_3d(seg, depth_to_message(T, _header(), _depth(), "16UC1"), _info(), FRAME)
    msg = TransformStamped()  # camera optical frame -> base_link: z forward becomes x, x right becomes -y
    msg.transform.translation.x, msg.transform.translation.z = 0.1, 0.5
    msg.transform.rotation.x, msg.transform.rotation.y = -0.5, 0.5
    msg.transform.rotation.z, msg.transform.rotation.w = -0.5, 0.5
    to = transform_from_msg(msg)
    camera, moved = make_outputs_3d(M, _header(), seg, _image()), make_outputs_3d(M, _header(), seg, _image(), to=to)
    for a, b in zip(camera.detections.detections, moved.detections.detections, strict=True):
        pa, pb = a.bbox.center.position, b.bbox.center.position
        assert (pb.x, pb.y, pb.z) == pytest.approx((pa.z + 0.1, -pa.x, -pa.y + 0.5))
        assert b.bbox.center.orientation == msg.transform.rotation and b.bbox.size == a.bbox.size
        ca, cb = (np.array(d.results[0].pose.covariance).reshape(6, 6) for d in (a, b))
        assert cb[0, 0] == pytest.approx(ca[2, 2]) and cb[1, 1] == pytest.approx(ca[0, 0])
    pa, pb = (np.frombuffer(bytes(c.cloud.data), dtype=POINT_DTYPE) for c in (camera, moved))
    assert np.allclose(pb["x"], pa["z"] + 0.1, atol=1e-5) and np.allclose(pb["y"], -pa["x"], atol=1e-5)
    assert moved.markers.markers[1].pose == moved.detections.detections[0].bbox.center
    empty = make_outputs_3d(M, _header(), Segmentation(H, W, []), _image())
    assert empty.detections.detections == [] and empty.cloud.width == 0
    assert [m.action for m in empty.markers.markers] == [3]  # DELETEALL only: the previous frame's objects go


def test_intrinsics_come_from_p_then_k_with_binning_and_roi():
    """P describes the rectified image (what registered depth is); K only where P is unset."""
    from sensor_msgs.msg import RegionOfInterest

    info = _info()
    info.k = [99.0, 0.0, 1.0, 0.0, 99.0, 1.0, 0.0, 0.0, 1.0]  # the raw image's: not used while P is set
    info.p = [CAM.fx, 0.0, CAM.cx, 0.0, 0.0, CAM.fy, CAM.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert camera_from_info(info, W, H) == CAM
    assert camera_from_info(_info(), W, H) == CAM  # P all zero: K
    binned = _info(width=2 * W, height=2 * H)
    binned.p = [120.0, 0.0, 64.0, 0.0, 0.0, 120.0, 48.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    binned.binning_x = binned.binning_y = 2
    assert camera_from_info(binned, W, H) == CameraIntrinsics(60.0, 60.0, 32.0, 24.0)
    roi = _info(width=640, height=480)
    roi.p = [60.0, 0.0, 331.5, 0.0, 0.0, 60.0, 223.5, 0.0, 0.0, 0.0, 1.0, 0.0]
    roi.roi = RegionOfInterest(x_offset=300, y_offset=200, width=W, height=H)
    assert camera_from_info(roi, W, H) == CAM
    with pytest.raises(DepthInputError, match="camera_info is for 64x48 images \\(binning 1x1, ROI\\)"):
        camera_from_info(roi, 2 * W, H)


def test_depth_in_another_frame_than_colour_gives_no_3d():
    seg = _seg()
    depth = depth_to_message(T, _header(), _depth(), "16UC1")
    with pytest.raises(DepthInputError, match="depth is in frame 'camera_color_optical_frame' but the colour "
                                              "image in 'camera_depth_optical_frame'"):
        frame_to_3d(seg, depth, _info(), "camera_depth_optical_frame")
    depth.header.frame_id = "camera_depth_optical_frame"
    with pytest.raises(DepthInputError, match="depth is in frame 'camera_depth_optical_frame'.*registered"):
        frame_to_3d(seg, depth, _info(), FRAME)
    info = _info()
    info.header.frame_id = "camera_depth_optical_frame"
    with pytest.raises(DepthInputError, match="camera_info is in frame"):
        frame_to_3d(seg, depth_to_message(T, _header(), _depth(), "16UC1"), info, FRAME)
    assert all(i.object3d is None for i in seg.instances)


def test_a_distorted_camera_read_from_image_raw_is_warned_about():
    info = _info()
    assert unrectified_warning(info, "/camera/color/image_raw") == ""  # no distortion
    info.d = [0.1, -0.05, 0.0, 0.0, 0.0]
    assert "unrectified" in unrectified_warning(info, "/camera/color/image_raw")
    assert unrectified_warning(info, "/camera/color/image_rect_color") == ""


def test_big_endian_and_padded_depth_rows():
    depth = _depth()
    data = np.zeros((H, W + 3), ">u2")
    data[:, :W] = np.round(depth * 1000)
    msg = Image(header=_header(), height=H, width=W, encoding="mono16", is_bigendian=1, step=(W + 3) * 2,
                data=data.tobytes())
    assert np.allclose(depth_from_message(msg, W, H), depth)


# -- the synchroniser ----------------------------------------------------------------------------------
MS = 1_000_000


def test_sync_pairs_by_nearest_stamp_within_slop():
    sync = StampSync(slop=0.02)
    assert sync.add("color", 100 * MS, "c100") == []
    assert sync.add("depth", 95 * MS, "d95") == []  # camera_info still missing
    out = sync.add("camera_info", 101 * MS, "i101")
    assert [(m.color, m.depth, m.camera_info) for m in out] == [("c100", "d95", "i101")]
    sync.add("depth", 130 * MS, "d130")
    sync.add("depth", 141 * MS, "d141")
    sync.add("camera_info", 139 * MS, "i139")
    out = sync.add("color", 138 * MS, "c138")
    assert [(m.color, m.depth) for m in out] == [("c138", "d141")]  # nearest, not first


def test_colour_without_matching_depth_still_comes_out_in_order():
    sync = StampSync(slop=0.01)
    out = sync.add("color", 100 * MS, "c100") + sync.add("color", 133 * MS, "c133")
    assert out == []
    out += sync.add("camera_info", 133 * MS, "i133")  # past c100's window: c100 can never match
    assert [m.color for m in out] == ["c100"]
    out += sync.add("depth", 133 * MS, "d133")
    assert [(m.color, m.complete) for m in out] == [("c100", False), ("c133", True)]


def test_expire_releases_frames_when_depth_stops():
    sync = StampSync(slop=0.01, max_wait=0.2)
    sync.add("color", 100 * MS, "c100")
    sync.add("color", 200 * MS, "c200")
    assert sync.expire(250 * MS) == []
    assert [m.color for m in sync.expire(350 * MS)] == ["c100"]
    assert [m.color for m in sync.expire(1000 * MS)] == ["c200"]
    with pytest.raises(ValueError, match="unknown stream"):
        sync.add("infrared", 1, None)


def test_sync_queue_never_grows_past_its_size():
    sync = StampSync(slop=0.01, queue_size=3)
    released = []
    for k in range(10):  # no depth at all: a full queue hands out its oldest frame without depth
        released += sync.add("color", k * 100 * MS, f"c{k}")
    assert [m.color for m in released] == [f"c{k}" for k in range(7)] and not any(m.complete for m in released)
    assert len(sync.queues["color"]) == 3
