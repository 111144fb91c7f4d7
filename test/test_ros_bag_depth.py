"""`saom bag` with depth and camera_info topics: 3D outputs paired by stamp, frames without depth counted."""
from __future__ import annotations

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, Writer

from saom_core.errors import SaomError
from saom_ros.bag import run_bag
from saom_ros.conversions import make_image
from saom_ros.msgtypes import rosbags_types, typestore
from saom_ros.objects3d import POINT_DTYPE, depth_to_message
from saom_ros.testing import FakeSegmenter

STORE = typestore()
T = rosbags_types(STORE)
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")
W, H = 64, 48
COLOR, DEPTH, INFO = "/camera/color/image_raw", "/camera/aligned_depth_to_color/image_raw", "/camera/color/camera_info"


def _info(header, fx=50.0):
    cls, roi = STORE.types["sensor_msgs/msg/CameraInfo"], STORE.types["sensor_msgs/msg/RegionOfInterest"]
    return cls(header=header, height=H, width=W, distortion_model="plumb_bob", d=np.zeros(5),
               k=np.array([fx, 0, 31.5, 0, fx, 23.5, 0, 0, 1.0]), r=np.eye(3).reshape(-1), p=np.zeros(12),
               binning_x=0, binning_y=0, roi=roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def _make_bag(path, encoding):
    """5 colour frames; depth 10 ms after colour (within slop) except frame 3 (none) and frame 4 (bad focal length)."""
    with Writer(path, version=8) as writer:
        conns = {name: writer.add_connection(name, msgtype, typestore=STORE) for name, msgtype in (
            (COLOR, "sensor_msgs/msg/Image"), (DEPTH, "sensor_msgs/msg/Image"), (INFO, "sensor_msgs/msg/CameraInfo"))}
        t0 = 1_700_000_000_000_000_000
        for i in range(5):
            header = T.Header(stamp=T.Time(sec=100 + i, nanosec=0), frame_id="color")
            writer.write(conns[COLOR], t0 + i * 10**9, STORE.serialize_cdr(
                make_image(T, header, np.full((H, W, 3), 90, np.uint8), "rgb8"), "sensor_msgs/msg/Image"))
            if i == 3:
                continue
            later = T.Header(stamp=T.Time(sec=100 + i, nanosec=10_000_000), frame_id="color")  # registered
            depth = depth_to_message(T, later, np.full((H, W), 1.2, np.float32), encoding)
            writer.write(conns[DEPTH], t0 + i * 10**9 + 1, STORE.serialize_cdr(depth, "sensor_msgs/msg/Image"))
            writer.write(conns[INFO], t0 + i * 10**9 + 2, STORE.serialize_cdr(
                _info(later, fx=0.0 if i == 4 else 50.0), "sensor_msgs/msg/CameraInfo"))


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_bag_writes_3d_outputs_with_the_colour_header(tmp_path, encoding):
    _make_bag(tmp_path / "in", encoding)
    summary = run_bag(FakeSegmenter(), tmp_path / "in", tmp_path / "out", COLOR, progress=False,
                      depth_topic=DEPTH, camera_info_topic=INFO, sync_slop=0.02)
    assert summary.segmented == 5 and summary.without_depth == 2 and summary.failed == 0
    assert any("focal length" in e for e in summary.errors)
    got: dict[str, list] = {}
    with Reader(tmp_path / "out") as reader:
        for conn, _, raw in reader.messages():
            got.setdefault(conn.topic, []).append(STORE.deserialize_cdr(raw, conn.msgtype))
    dets3d = got["/saom_node/detections_3d"]  # every frame: empty without usable depth, as the node
    assert [d.header.stamp.sec for d in dets3d] == [100, 101, 102, 103, 104]
    assert all(d.header.frame_id == "color" for d in dets3d)
    dets2d = {d.header.stamp.sec: d for d in got["/saom_node/detections"]}
    for d in dets3d[:3]:
        assert [x.id for x in d.detections] == [x.id for x in dets2d[d.header.stamp.sec].detections]
        assert all(x.bbox.center.position.z > 1.2 for x in d.detections)
    assert dets3d[3].detections == [] and dets3d[4].detections == []
    cloud = got["/saom_node/objects"][0]
    assert np.allclose(np.frombuffer(cloud.data.tobytes(), dtype=POINT_DTYPE)["z"], 1.2, atol=1e-3)
    markers = got["/saom_node/markers"]
    assert len(markers) == 5 and [m.action for m in markers[3].markers] == [3]  # DELETEALL only


def test_bag_depth_topic_errors(tmp_path):
    _make_bag(tmp_path / "in", "16UC1")
    with pytest.raises(SaomError, match="both a depth topic and a camera_info topic"):
        run_bag(FakeSegmenter(), tmp_path / "in", tmp_path / "o1", COLOR, progress=False, depth_topic=DEPTH)
    with pytest.raises(SaomError, match="no sensor_msgs/msg/CameraInfo topic /nope"):
        run_bag(FakeSegmenter(), tmp_path / "in", tmp_path / "o2", COLOR, progress=False, depth_topic=DEPTH,
                camera_info_topic="/nope")
