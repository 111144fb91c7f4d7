"""`saom bag` (saom_ros.bag.run_bag): round trip on bags generated with rosbags, MCAP and sqlite3."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from saom_core.errors import SaomError
from saom_ros.bag import run_bag
from saom_ros.conversions import make_image
from saom_ros.msgtypes import rosbags_types, typestore
from saom_ros.testing import FAIL_PIXEL, FakeSegmenter

STORE = typestore()
# rosidl_parser imports lark, which imports the deprecated sre_parse (upstream, harmless)
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")
T = rosbags_types(STORE)
TOPIC = "/camera/image_raw"
W, H = 64, 48


def _frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def make_bag(path: Path, n: int = 6, storage=StoragePlugin.MCAP, extra: bool = True) -> list[tuple[int, tuple]]:
    """n rgb8 frames on TOPIC (stamps differ from the bag times), plus a bad frame, an unsupported one, a
    frame the fake model fails on, and an unrelated topic. Returns (bag time, header) of the n good frames."""
    good = []
    with Writer(path, version=8, storage_plugin=storage) as writer:
        conn = writer.add_connection(TOPIC, "sensor_msgs/msg/Image", typestore=STORE)
        other = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=STORE)
        t = 1_700_000_000_000_000_000
        for i in range(n):
            header = T.Header(stamp=T.Time(sec=500 + i, nanosec=1000 + i), frame_id=f"cam_{i}")
            msg = make_image(T, header, _frame(i), "rgb8")
            bag_time = t + i * 33_000_000
            writer.write(conn, bag_time, STORE.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            good.append((bag_time, (500 + i, 1000 + i, f"cam_{i}")))
            writer.write(other, bag_time + 1, STORE.serialize_cdr(T_string("hi"), "std_msgs/msg/String"))
        if extra:
            hdr = T.Header(stamp=T.Time(sec=900, nanosec=0), frame_id="bad")
            unsupported = T.Image(header=hdr, height=2, width=2, encoding="32FC1", is_bigendian=0, step=8,
                                  data=np.zeros(16, np.uint8))
            truncated = T.Image(header=hdr, height=H, width=W, encoding="rgb8", is_bigendian=0, step=W * 3,
                                data=np.zeros(10, np.uint8))
            fails = np.zeros((H, W, 3), np.uint8)
            fails[0, 0] = FAIL_PIXEL
            for k, msg in enumerate([unsupported, truncated, make_image(T, hdr, fails, "rgb8")]):
                writer.write(conn, t + (n + k) * 33_000_000, STORE.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    return good


def T_string(text: str):
    return STORE.types["std_msgs/msg/String"](data=text)


def read_all(path: Path) -> dict[str, list[tuple[int, object, bytes]]]:
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, STORE.deserialize_cdr(raw, conn.msgtype), raw))
    return out


def hkey(h) -> tuple:
    return h.stamp.sec, h.stamp.nanosec, h.frame_id


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_round_trip(tmp_path, storage):
    good = make_bag(tmp_path / "in", storage=storage)
    seg = FakeSegmenter()
    summary = run_bag(seg, tmp_path / "in", tmp_path / "out", TOPIC, progress=False)
    assert (summary.frames, summary.segmented, summary.skipped, summary.failed) == (9, 6, 1, 2)
    assert len(summary.errors) == 3 and "32FC1" in " ".join(summary.errors)
    assert summary.topics == {"/saom_node/detections": 6, "/saom_node/instance_mask": 6,
                              "/saom_node/label_info": 1, "/saom_node/overlay": 6}
    assert any((tmp_path / "out").glob("*.mcap")), "MCAP output by default"

    bag = read_all(tmp_path / "out")
    assert set(bag) == set(summary.topics)
    for topic in ("/saom_node/detections", "/saom_node/instance_mask", "/saom_node/overlay"):
        assert [(t, hkey(m.header)) for t, m, _ in bag[topic]] == good, f"{topic}: same bag times and headers"
    info = bag["/saom_node/label_info"][0][1]
    assert [c.class_name for c in info.class_map] == seg.class_names
    outputs = zip(bag["/saom_node/detections"], bag["/saom_node/instance_mask"], range(6), strict=True)
    for (_, det, _), (_, mask, _), i in outputs:
        expected = FakeSegmenter().segment(_frame(i))
        assert [d.id for d in det.detections] == ["1", "2", "3"]
        assert all(hkey(d.header) == hkey(det.header) for d in det.detections)
        expected_ids = [str(x.class_id) for x in expected.instances]
        assert [d.results[0].hypothesis.class_id for d in det.detections] == expected_ids
        labels = np.frombuffer(mask.data.tobytes(), "<u2").reshape(mask.height, mask.width)
        np.testing.assert_array_equal(labels, expected.label_image())
    overlay = bag["/saom_node/overlay"][0][1]
    assert (overlay.encoding, overlay.width, overlay.height) == ("rgb8", W, H)

    # metadata: QoS of label_info is transient local, so playback latches the class map
    with Reader(tmp_path / "out") as reader:
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
        assert reader.message_count == 19
    assert qos["/saom_node/label_info"][0].durability.name == "TRANSIENT_LOCAL"


def test_bag_bytes_read_by_real_ros2_typesupport(tmp_path):
    """The CDR that rosbags wrote deserializes with rclpy's generated vision_msgs (the wire format ROS 2 uses)."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from vision_msgs.msg import Detection2DArray, LabelInfo

    make_bag(tmp_path / "in", n=2, extra=False)
    run_bag(FakeSegmenter(), tmp_path / "in", tmp_path / "out", TOPIC, progress=False, overlay=False)
    bag = read_all(tmp_path / "out")
    det = deserialize_message(bag["/saom_node/detections"][1][2], Detection2DArray)
    assert det.header.frame_id == "cam_1" and [d.id for d in det.detections] == ["1", "2", "3"]
    assert det.detections[0].results[0].hypothesis.class_id == "1"
    mask = deserialize_message(bag["/saom_node/instance_mask"][0][2], Image)
    assert mask.encoding == "mono16" and mask.height == H
    info = deserialize_message(bag["/saom_node/label_info"][0][2], LabelInfo)
    assert info.class_map[1].class_name == "mug" and info.class_map[1].class_id == 1


def test_options_compressed_input_and_single_file(tmp_path):
    path = tmp_path / "in"
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection("/cam/compressed", "sensor_msgs/msg/CompressedImage", typestore=STORE)
        for i in range(3):
            ok, png = cv2.imencode(".png", _frame(i)[:, :, ::-1])
            msg = STORE.types["sensor_msgs/msg/CompressedImage"](
                header=T.Header(stamp=T.Time(sec=i, nanosec=0), frame_id="c"), format="png", data=png.reshape(-1))
            writer.write(conn, 10 + i, STORE.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage"))
    single = next(path.glob("*.mcap"))
    summary = run_bag(FakeSegmenter(), single, tmp_path / "out", "/cam/compressed", progress=False,
                      output_prefix="seg", overlay=False, copy_input=True, storage="sqlite3",
                      score_threshold=0.8)
    assert summary.segmented == 3 and summary.failed == 0
    assert summary.topics == {"/seg/detections": 3, "/seg/instance_mask": 3, "/seg/label_info": 1, "/cam/compressed": 3}
    assert any((tmp_path / "out").glob("*.db3"))
    bag = read_all(tmp_path / "out")
    assert [len(m.detections) for _, m, _ in bag["/seg/detections"]] == [1, 1, 1]  # score 0.855 only
    assert bag["/seg/label_info"][0][1].threshold == pytest.approx(0.8)
    assert [t for t, _, _ in bag["/cam/compressed"]] == [10, 11, 12]


def test_errors(tmp_path):
    make_bag(tmp_path / "in", n=1, extra=False)
    with pytest.raises(SaomError, match="no topic /nope; image topics in the bag: /camera/image_raw"):
        run_bag(FakeSegmenter(), tmp_path / "in", tmp_path / "out", "/nope", progress=False)
    with pytest.raises(SaomError, match="is std_msgs/msg/String"):
        run_bag(FakeSegmenter(), tmp_path / "in", tmp_path / "out2", "/chatter", progress=False)
    with pytest.raises(SaomError, match="no such bag"):
        run_bag(FakeSegmenter(), tmp_path / "missing", tmp_path / "out3", TOPIC, progress=False)
    (tmp_path / "exists").mkdir()
    with pytest.raises(SaomError, match="exists already"):
        run_bag(FakeSegmenter(), tmp_path / "in", tmp_path / "exists", TOPIC, progress=False)
    (tmp_path / "junk").mkdir()
    with pytest.raises(SaomError, match="cannot open the bag"):
        run_bag(FakeSegmenter(), tmp_path / "junk", tmp_path / "out4", TOPIC, progress=False)
    with pytest.raises(SaomError, match="storage"):
        run_bag(FakeSegmenter(), tmp_path / "in", tmp_path / "out5", TOPIC, progress=False, storage="rosbag1")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
