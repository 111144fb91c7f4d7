"""saom_ros.conversions and msgtypes without ROS (rosbags message classes stand in for rclpy's)."""
from __future__ import annotations

import array
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from saom_core.errors import ImageError
from saom_core.infer.types import Segmentation
from saom_ros.conversions import (
    SUPPORTED_ENCODINGS,
    UnsupportedEncoding,
    answers_in_prompt_order,
    compressed_to_rgb,
    copy_header,
    filter_instances,
    image_pixels,
    image_to_rgb,
    make_image,
    make_label_info,
    make_outputs,
    make_prompted_outputs,
    message_to_rgb,
    overlay_image,
    prompts_from_detections,
)
from saom_ros.msgtypes import VISION_MSGS_DEFINITIONS, rosbags_types, typestore
from saom_ros.testing import FakeSegmenter, encoded_test_image

REPO = Path(__file__).resolve().parents[1]
T = rosbags_types()
STORE = typestore()


def header(sec=5, nanosec=6, frame_id="cam"):
    return T.Header(stamp=T.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def raw_image(pixels: np.ndarray, encoding: str, pad: int = 0, data_kind: str = "numpy"):
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    rows = np.zeros((h, w * c + pad), np.uint8)
    rows[:, : w * c] = pixels.reshape(h, w * c)
    data = rows.tobytes()
    if data_kind == "numpy":
        data = np.frombuffer(data, np.uint8)
    elif data_kind == "array":
        data = array.array("B", data)
    return T.Image(header=header(), height=h, width=w, encoding=encoding, is_bigendian=0, step=w * c + pad,
                   data=data if data_kind != "numpy" else data)


RGB = np.random.default_rng(0).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)


@pytest.mark.parametrize("data_kind", ["numpy", "array", "bytes"])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_raw_encodings_to_rgb(encoding, pad, data_kind):
    data, step, expected = encoded_test_image(encoding, 6, 10, seed=3, pad=pad)
    if data_kind == "numpy":
        data = np.frombuffer(data, np.uint8)
    elif data_kind == "array":
        data = array.array("B", data)
    msg = T.Image(header=header(), height=6, width=10, encoding=encoding.upper() if encoding == "rgb8" else encoding,
                  is_bigendian=0, step=step, data=data)
    out = image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (6, 10, 3) and out.flags.c_contiguous and out.flags.writeable
    tolerance = 1 if encoding in ("yuv422", "uyvy", "yuv422_yuy2", "yuyv") else 0  # rounding of 1.164 (Y - 16)
    assert np.abs(out.astype(int) - expected).max() <= tolerance, encoding


def test_encodings_the_issue_lists_are_supported():
    assert {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "yuv422_yuy2", "uyvy", "bayer_rggb8",
            "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8"} <= set(SUPPORTED_ENCODINGS)


def test_readme_lists_the_supported_encodings():
    ros_section = (REPO / "README.md").read_text().split("## ROS 2", 1)[1].split("\n## ", 1)[0]
    line = next(line for line in ros_section.splitlines() if "**Encodings**" in line)
    text = ros_section[ros_section.index(line):].split("\n- **", 1)[0]
    assert [e for e in SUPPORTED_ENCODINGS if e not in text] == []


def test_mono16_byte_order_and_colour_yuv():
    big = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(">u2")
    msg = T.Image(header=header(), height=3, width=4, encoding="mono16", is_bigendian=1, step=8,
                  data=np.frombuffer(big.tobytes(), np.uint8))
    expected = np.rint(big.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(image_to_rgb(msg)[:, :, 0], expected)
    # one colour frame in UYVY and in YUYV byte order: the same RGB, red where V is high, blue where U is
    y = np.full((2, 4), 120, np.uint8)
    u = np.array([[128, 200], [60, 128]], np.uint8).repeat(2, 1)
    v = np.array([[200, 128], [128, 60]], np.uint8).repeat(2, 1)
    chroma = np.where(np.arange(4) % 2 == 0, u, v)  # U for even pixels, V for odd ones
    uyvy = np.stack([chroma, y], 2).tobytes()
    yuyv = np.stack([y, chroma], 2).tobytes()
    outs = [image_to_rgb(T.Image(header=header(), height=2, width=4, encoding=enc, is_bigendian=0, step=8,
                                 data=np.frombuffer(buf, np.uint8)))
            for enc, buf in (("uyvy", uyvy), ("yuv422", uyvy), ("yuv422_yuy2", yuyv))]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    r, g, b = (outs[0][0, 0].astype(int)[i] for i in range(3))
    assert r > g and r > b, "high V is red"
    r, g, b = (outs[0][0, 2].astype(int)[i] for i in range(3))
    assert b > r and b > g, "high U is blue"


def test_unsupported_and_bad_images():
    msg = raw_image(RGB[:, :, :2], "16UC1")
    with pytest.raises(UnsupportedEncoding, match="16UC1"):
        image_to_rgb(msg)
    assert issubclass(UnsupportedEncoding, ImageError)
    short = raw_image(RGB, "rgb8")
    short.data = short.data[:10]
    with pytest.raises(ImageError, match="needs"):
        image_to_rgb(short)
    narrow = raw_image(RGB, "rgb8")
    narrow.step = 5
    with pytest.raises(ImageError, match="step"):
        image_to_rgb(narrow)
    empty = raw_image(RGB, "rgb8")
    empty.height = 0
    with pytest.raises(ImageError, match="empty"):
        image_to_rgb(empty)
    odd = T.Image(header=header(), height=2, width=3, encoding="yuv422", is_bigendian=0, step=6,
                  data=np.zeros(12, np.uint8))
    with pytest.raises(ImageError, match="even width"):
        image_to_rgb(odd)
    mono16 = T.Image(header=header(), height=2, width=3, encoding="mono16", is_bigendian=0, step=3,
                     data=np.zeros(6, np.uint8))
    with pytest.raises(ImageError, match="step 3 is smaller than width 3 x 2 bytes"):
        image_to_rgb(mono16)


def _compressed(img: np.ndarray, ext: str, fmt: str):
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return T.CompressedImage(header=header(), format=fmt, data=buf.reshape(-1))


def test_compressed_images():
    png = _compressed(RGB[:, :, ::-1], ".png", "rgb8; png compressed bgr8")
    np.testing.assert_array_equal(compressed_to_rgb(png), RGB)
    np.testing.assert_array_equal(message_to_rgb(png), RGB)
    gray = _compressed(RGB[:, :, 0], ".png", "png")
    np.testing.assert_array_equal(compressed_to_rgb(gray), np.repeat(RGB[:, :, :1], 3, 2))
    flat = np.full((16, 16, 3), (10, 120, 240), np.uint8)
    jpeg = _compressed(flat[:, :, ::-1], ".jpg", "jpeg")
    assert np.abs(compressed_to_rgb(jpeg).astype(int) - flat).max() <= 4
    bgra = np.concatenate([RGB[:, :, ::-1], np.full(RGB.shape[:2] + (1,), 255, np.uint8)], 2)
    np.testing.assert_array_equal(compressed_to_rgb(_compressed(bgra, ".png", "png")), RGB)
    with pytest.raises(ImageError, match="cannot decode"):
        compressed_to_rgb(T.CompressedImage(header=header(), format="jpeg", data=np.arange(50, dtype=np.uint8)))
    with pytest.raises(ImageError, match="no data"):
        compressed_to_rgb(T.CompressedImage(header=header(), format="jpeg", data=np.zeros(0, np.uint8)))
    with pytest.raises(UnsupportedEncoding):
        compressed_to_rgb(T.CompressedImage(header=header(), format="16UC1; compressedDepth",
                                            data=np.ones(4, np.uint8)))
    deep = _compressed(np.full((4, 4), 4000, np.uint16), ".png", "png")
    with pytest.raises(UnsupportedEncoding, match="8-bit"):
        compressed_to_rgb(deep)


def _seg() -> Segmentation:
    return FakeSegmenter().segment(np.zeros((30, 40, 3), np.uint8))


def test_outputs_from_a_segmentation():
    seg = _seg()
    h = header(sec=11, nanosec=12, frame_id="camera_optical")
    out = make_outputs(T, h, seg)
    det = out.detections
    assert det.header is not h
    assert (det.header.stamp.sec, det.header.stamp.nanosec, det.header.frame_id) == (11, 12, "camera_optical")
    assert len(det.detections) == 3
    for k, (d, inst) in enumerate(zip(det.detections, seg.instances, strict=True), 1):
        assert d.id == str(k) and d.header.frame_id == "camera_optical"
        hyp = d.results[0].hypothesis
        assert hyp.class_id == str(inst.class_id) and hyp.score == pytest.approx(inst.predicted_iou * inst.class_score)
        x0, y0, x1, y1 = inst.box_xyxy
        assert (d.bbox.center.position.x, d.bbox.center.position.y) == ((x0 + x1) / 2, (y0 + y1) / 2)
        assert (d.bbox.size_x, d.bbox.size_y, d.bbox.center.theta) == (x1 - x0, y1 - y0, 0.0)
        assert d.results[0].pose.pose.orientation.w == 1.0
    m = out.instance_mask
    assert (m.encoding, m.height, m.width, m.step, m.is_bigendian) == ("mono16", 30, 40, 80, 0)
    labels = np.frombuffer(m.data.tobytes(), "<u2").reshape(30, 40)
    np.testing.assert_array_equal(labels, seg.label_image())
    # the better instance wins overlaps; each id is present in the mask
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # wire-level: rosbags serializes and reads back the same fields
    back = STORE.deserialize_cdr(STORE.serialize_cdr(det, "vision_msgs/msg/Detection2DArray"),
                                 "vision_msgs/msg/Detection2DArray")
    assert [d.id for d in back.detections] == ["1", "2", "3"]
    back_mask = STORE.deserialize_cdr(STORE.serialize_cdr(m, "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image")
    np.testing.assert_array_equal(np.frombuffer(back_mask.data.tobytes(), "<u2").reshape(30, 40), labels)


def test_score_threshold_keeps_numbering_consistent():
    seg = _seg()  # scores 0.855, 0.765, 0.675
    kept = filter_instances(seg, 0.7)
    assert len(kept.instances) == 2 and filter_instances(seg, 0.0) is seg
    out = make_outputs(T, header(), seg, score_threshold=0.7)
    assert [d.id for d in out.detections.detections] == ["1", "2"]
    labels = np.frombuffer(out.instance_mask.data.tobytes(), "<u2")
    assert set(np.unique(labels)) == {0, 1, 2}
    empty = make_outputs(T, header(), seg, score_threshold=0.99)
    assert empty.detections.detections == [] and not np.frombuffer(empty.instance_mask.data.tobytes(), "<u2").any()


def test_label_info_class_ids_match_hypotheses():
    names = FakeSegmenter().class_names
    info = make_label_info(T, header(), names, 0.25)
    assert [(c.class_id, c.class_name) for c in info.class_map] == list(enumerate(names))
    assert info.threshold == pytest.approx(0.25)
    det = make_outputs(T, header(), _seg()).detections
    lookup = {c.class_id: c.class_name for c in info.class_map}
    names = [lookup[int(d.results[0].hypothesis.class_id)] for d in det.detections]
    assert names == [i.class_name for i in _seg().instances]
    STORE.serialize_cdr(info, "vision_msgs/msg/LabelInfo")


def test_make_image_encodings_and_errors():
    rgb = make_image(T, header(), RGB, "rgb8")
    assert (rgb.step, rgb.encoding) == (27, "rgb8")
    np.testing.assert_array_equal(image_to_rgb(rgb), RGB)
    mono = make_image(T, header(), RGB[:, :, 0], "mono8")
    np.testing.assert_array_equal(image_to_rgb(mono)[:, :, 1], RGB[:, :, 0])
    for arr, enc in [(RGB, "mono16"), (RGB[:, :, 0], "rgb8")]:
        with pytest.raises(ValueError):
            make_image(T, header(), arr, enc)
    with pytest.raises(ValueError, match="cannot encode"):
        make_image(T, header(), RGB, "yuv422")
    h = copy_header(T, header(1, 2, "x"))
    assert (h.stamp.sec, h.stamp.nanosec, h.frame_id) == (1, 2, "x")


def _det(cx, cy, sx, sy):
    return T.Detection2D(header=header(), results=[], id="",
                         bbox=T.BoundingBox2D(center=T.Pose2D(position=T.Point2D(x=cx, y=cy), theta=0.0),
                                              size_x=sx, size_y=sy))


def test_prompts_keep_their_place_and_ids():
    dets = [_det(5, 6, 0, 0), _det(20, 10, 10, 4), _det(float("nan"), 1, 0, 0), _det(-5, 200, 0, 0),
            _det(35, 25, 20, 20), _det(10, 10, -3, 4), _det(100, 100, 10, 10)]
    for k, d in enumerate(dets):
        d.id = f"p{k}"
    p = prompts_from_detections(T.Detection2DArray(header=header(), detections=dets), width=40, height=30)
    assert len(p) == 7 and p.n_valid == 3
    assert p.order == (("point", 0), ("box", 0), ("invalid", 0), ("invalid", 1), ("box", 1), ("invalid", 2),
                       ("invalid", 3))
    assert p.ids == tuple(f"p{k}" for k in range(7))
    assert "not finite" in p.problems[0] and "outside" in p.problems[1] and "negative" in p.problems[2]
    assert "'p6'" in p.problems[3] and "outside" in p.problems[3]
    np.testing.assert_allclose(p.boxes, [[15, 8, 25, 12], [25, 15, 40, 30]])
    np.testing.assert_allclose(p.points, [[5, 6]])
    seg = FakeSegmenter().segment_prompts(np.zeros((30, 40, 3), np.uint8), p.boxes, p.points)
    assert [i.class_id for i in seg.instances] == [1, 1, 2]  # boxes first, then points
    answers = answers_in_prompt_order(seg, p)
    assert [None if a is None else a.class_id for a in answers] == [2, 1, None, None, 1, None, None]
    assert answers[0].point == (5.0, 6.0)
    with pytest.raises(ValueError, match="2 instances for 3 valid prompts"):
        answers_in_prompt_order(Segmentation(height=30, width=40, instances=seg.instances[:2]), p)
    empty = prompts_from_detections(T.Detection2DArray(header=header(), detections=[]))
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.points.shape == (0, 2)

    # outputs: detection k answers prompt k with its id; overlapping masks each keep their own plane
    dets_msg, masks = make_prompted_outputs(T, header(), answers, p.ids, 30, 40)
    assert [d.id for d in dets_msg.detections] == list(p.ids)
    assert [len(d.results) for d in dets_msg.detections] == [1, 1, 0, 0, 1, 0, 0]
    assert dets_msg.detections[2].bbox.size_x == 0.0
    assert masks.encoding == "mono8" and (masks.height, masks.width, masks.step) == (7 * 30, 40, 40)
    planes = np.frombuffer(bytes(masks.data), np.uint8).reshape(7, 30, 40)
    for k, a in enumerate(answers):
        np.testing.assert_array_equal(planes[k] == 255, a.mask if a is not None else np.zeros((30, 40), bool))

    # a point on a mug inside a box around the shelf: both answers keep their whole mask
    shelf_and_mug = FakeSegmenter().segment_prompts(np.zeros((30, 40, 3), np.uint8), np.array([[0, 0, 40, 30]]),
                                                    np.array([[10, 10]]))
    box, point = shelf_and_mug.instances
    assert (box.mask & point.mask).sum() == point.mask.sum() > 0
    _, overlap = make_prompted_outputs(T, header(), [box, point], ["shelf", "mug"], 30, 40)
    both = np.frombuffer(bytes(overlap.data), np.uint8).reshape(2, 30, 40)
    np.testing.assert_array_equal(both[0] == 255, box.mask)
    np.testing.assert_array_equal(both[1] == 255, point.mask)


def test_overlay_image():
    img = np.full((30, 40, 3), 100, np.uint8)
    seg = _seg()
    out = overlay_image(img, seg)
    assert out.shape == img.shape and out.dtype == np.uint8 and (out != img).any()
    assert overlay_image(img, Segmentation(height=30, width=40)) is img


def _fields(text: str, name: str):
    from rosbags.typesys import get_types_from_msg

    return get_types_from_msg(text, name)


def test_embedded_vision_msgs_match_ros_vision_msgs():
    """The definitions rosbags uses are the fields of ros/vision_msgs/msg/*.msg (vision_msgs 4.1.1)."""
    msg_dir = REPO / "ros" / "vision_msgs" / "msg"
    files = {p.stem: p.read_text() for p in sorted(msg_dir.glob("*.msg"))}
    assert set(files) == set(VISION_MSGS_DEFINITIONS) and len(files) == 16
    for name, text in files.items():
        full = f"vision_msgs/msg/{name}"
        assert _fields(text, full) == _fields(VISION_MSGS_DEFINITIONS[name], full), name


def test_type_hashes_match_the_rosidl_build():
    """RIHS01 hashes of rosbags' types equal those rosidl generated for the vision_msgs built by `make ros`."""
    share = Path(sys.prefix) / "share" / "vision_msgs" / "msg"
    assert share.is_dir(), f"{share} missing: run `make ros` (bash ros/setup_ros_venv.sh .venv)"
    for name in VISION_MSGS_DEFINITIONS:
        hashes = json.loads((share / f"{name}.json").read_text())["type_hashes"]
        expected = next(h["hash_string"] for h in hashes if h["type_name"] == f"vision_msgs/msg/{name}")
        assert STORE.hash_rihs01(f"vision_msgs/msg/{name}") == expected, name


def test_cv_bridge_used_where_it_works(monkeypatch):
    """cv_bridge is preferred when importable and correct; ROS 1's broken PyPI build falls back to numpy."""
    import types

    from saom_ros.conversions import select_image_converter

    monkeypatch.setitem(sys.modules, "cv_bridge", None)  # not installed
    convert, name = select_image_converter(T.Image)
    assert name == "numpy"

    calls = []

    class GoodBridge:  # what ROS 2's cv_bridge returns for passthrough: the pixels, native byte order
        def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
            calls.append(msg.encoding)
            assert desired_encoding == "passthrough"
            return image_pixels(msg).copy()

    class BrokenBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
            raise TypeError("numpy 2 is not supported")  # what ROS 1's PyPI cv-bridge does

    for bridge, expected in ((GoodBridge, "cv_bridge"), (BrokenBridge, "numpy (cv_bridge failed its self-test)")):
        monkeypatch.setitem(sys.modules, "cv_bridge", types.SimpleNamespace(CvBridge=bridge))
        convert, name = select_image_converter(lambda: T.Image(header=header(), height=0, width=0, encoding="",
                                                                 is_bigendian=0, step=0, data=np.zeros(0, np.uint8)))
        assert name == expected
        msg = raw_image(RGB[:, :, ::-1], "bgr8", pad=2)
        np.testing.assert_array_equal(convert(msg), RGB)
        with pytest.raises(UnsupportedEncoding):
            convert(raw_image(RGB[:, :, :2], "16UC1"))
    assert set(SUPPORTED_ENCODINGS) <= set(calls), "the self-test converts every supported encoding"
    short = raw_image(RGB, "rgb8")
    short.data = short.data[:10]
    with pytest.raises(ImageError, match="needs"):  # the same clear per-frame error as without cv_bridge
        convert(short)
