"""saom_node with depth (real rclpy over loopback, fake segmenter): 3D outputs with the colour header
for 16UC1 and 32FC1, ids that stay with their objects, and bad depth that gives a warning, not a crash.

Each node runs in its own namespace, so its relative depth/image_raw and camera_info topics (which
the launch file remaps) do not meet another test's."""
from __future__ import annotations

import time

import numpy as np
import pytest

from saom_ros.testing import FakeSegmenter, isolate_ros_env

isolate_ros_env()

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from test_ros_node import RELIABLE, Collector, Harness, image_msg, key, mask_array, wait_until  # noqa: E402
from vision_msgs.msg import Detection2DArray, Detection3DArray  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from saom_ros.msgtypes import rclpy_types  # noqa: E402
from saom_ros.node import SaomNode  # noqa: E402
from saom_ros.objects3d import POINT_DTYPE, depth_to_message  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Deprecated in favor of:DeprecationWarning")]
T = rclpy_types()
H, W = 48, 64
PLANE_M = 1.2


@pytest.fixture(scope="module")
def ros():
    h = Harness()
    yield h
    h.close()


class ShufflingSegmenter(FakeSegmenter):
    """The fake's objects, listed in another order on every other frame: an id that is an index in
    the frame would change, a track id must not."""

    def segment(self, image):
        seg = super().segment(image)
        if self.calls % 2 == 0:
            seg.instances = seg.instances[::-1]
        return seg


class Rig:
    """A SaomNode with depth in namespace /<name>, and the tester's camera publishers and collectors."""

    def __init__(self, ros: Harness, name: str, ckpt, segmenter_cls=FakeSegmenter, start_first: bool = False,
                 tf_buffer=None, **params) -> None:
        self.ros, self.ns = ros, f"/{name}"
        values = {"checkpoint": str(ckpt), "autostart": False, "image_topic": "image", "depth_enabled": True,
                  "diagnostics_period": 0.2, **params}
        self.segmenters: list[FakeSegmenter] = []

        def factory(_params):
            self.segmenters.append(segmenter_cls())
            return self.segmenters[-1]

        self.node = SaomNode("saom", namespace=self.ns, context=ros.ctx, segmenter_factory=factory, tf_buffer=tf_buffer,
                             parameter_overrides=[Parameter(k, value=v) for k, v in values.items()])
        ros.executor.add_node(self.node)
        if start_first:  # before the camera's publishers exist
            assert self.node.startup()
        tester = ros.tester
        self.color = tester.create_publisher(Image, f"{self.ns}/{values['image_topic']}", RELIABLE)
        self.depth = tester.create_publisher(Image, f"{self.ns}/depth/image_raw", RELIABLE)
        self.info = tester.create_publisher(CameraInfo, f"{self.ns}/camera_info", RELIABLE)
        out = f"{self.ns}/saom"
        self.dets = Collector(tester, Detection2DArray, f"{out}/detections")
        self.masks = Collector(tester, Image, f"{out}/instance_mask")
        self.dets3d = Collector(tester, Detection3DArray, f"{out}/detections_3d")
        self.clouds = Collector(tester, PointCloud2, f"{out}/objects")
        self.markers = Collector(tester, MarkerArray, f"{out}/markers")
        self.warnings: list[str] = []  # what the node logged as warnings
        logger, warnings = self.node.get_logger(), self.warnings

        class LoggerSpy:
            def __getattr__(self, attr):
                return getattr(logger, attr)

            def warning(self, message, **kwargs):
                warnings.append(message)
                return logger.warning(message, **kwargs)

        spy = LoggerSpy()
        self.node.get_logger = lambda: spy
        if not start_first:
            assert self.node.startup()

    def frame(self, i: int, encoding: str = "16UC1", depth_m=None, info_fx: float = 50.0, depth: bool = True,
              depth_frame: str | None = None, distortion=()):
        """Publish frame i (colour, then depth and camera_info with the same stamp); its colour message."""
        color = image_msg(i, w=W, h=H)
        self.color.publish(color)
        if depth:
            plane = np.full((H, W), PLANE_M, np.float32) if depth_m is None else depth_m
            valid = encoding in ("16UC1", "32FC1")
            depth_msg = depth_to_message(T, color.header, plane, encoding if valid else "16UC1")
            depth_msg.encoding = encoding  # an unsupported one: the 16UC1 data under another name
            if depth_frame is not None:  # depth not registered to colour
                depth_msg.header.frame_id = depth_frame
            self.depth.publish(depth_msg)
            info = CameraInfo(header=color.header, width=W, height=H, d=list(distortion),
                              k=[info_fx, 0.0, 31.5, 0.0, 50.0, 23.5, 0.0, 0.0, 1.0])
            self.info.publish(info)
        return color

    def until(self, collectors, n: int, start: int, **kw) -> int:
        """Publish frames from `start` on until every collector holds n messages; the next frame number."""
        i = start
        ok = False
        for i in range(start, start + 60):
            self.frame(i, **kw)
            if all(c.wait(n, 0.4) for c in collectors):
                ok = True
                break
        assert ok, f"no outputs ({[len(c) for c in collectors]} of {n})"
        return i + 1

    def close(self) -> None:
        self.ros.executor.remove_node(self.node)
        self.node.close()
        self.node.destroy_node()


def _by_stamp(collector: Collector) -> dict:
    return {key(m.header): m for m in list(collector.msgs)}


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "fake.pt"
    path.write_bytes(b"not read by the fake segmenter")
    return path


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_depth_gives_3d_outputs_with_the_colour_header(ros, ckpt, encoding):
    rig = Rig(ros, f"rgbd_{encoding.lower()}", ckpt)
    try:
        rig.until([rig.dets, rig.dets3d, rig.clouds, rig.markers], 1, 0, encoding=encoding)
        dets2d = _by_stamp(rig.dets)
        for det3d in list(rig.dets3d.msgs):
            stamp = key(det3d.header)
            assert stamp[2].startswith("cam_") and stamp in dets2d  # the colour frame's header
            assert [d.id for d in det3d.detections] == [d.id for d in dets2d[stamp].detections] == ["1", "2", "3"]
            for d in det3d.detections:
                assert key(d.header) == stamp
                assert d.results[0].hypothesis.class_id in ("1", "2", "3")
                # a plane at 1.2 m: the visible surface is there, the box reaches behind it
                assert d.bbox.center.position.z - d.bbox.size.z / 2 == pytest.approx(PLANE_M, abs=0.01)
                assert d.bbox.size.x > 0.1 and d.bbox.size.y > 0.1
        cloud = rig.clouds.msgs[0]
        assert key(cloud.header) in dets2d
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "label", "class_id"]  # PCL's PointXYZRGBL
        points = np.frombuffer(bytes(cloud.data), dtype=POINT_DTYPE)
        assert len(points) == cloud.width > 0
        assert np.allclose(points["z"], PLANE_M, atol=0.002) and set(points["label"]) == {1, 2, 3}
        markers = rig.markers.msgs[0].markers
        assert key(markers[0].header) in dets2d and markers[0].action == 3  # DELETEALL first
        assert sorted({(m.ns, m.id) for m in markers[1:]}) == [(ns, k) for ns in ("boxes", "labels") for k in (1, 2, 3)]
    finally:
        rig.close()


def test_a_static_scene_keeps_its_ids_and_the_mask_values_follow_them(ros, ckpt):
    rig = Rig(ros, "rgbd_static", ckpt, segmenter_cls=ShufflingSegmenter)
    try:
        rig.until([rig.dets, rig.masks, rig.dets3d], 6, 0)
        expected = FakeSegmenter().segment(np.zeros((H, W, 3), np.uint8)).instances
        box_of = {str(k): inst.box_xyxy for k, inst in enumerate(expected, 1)}  # first frame: ids 1..3
        own = {str(k): inst.mask & ~np.any([o.mask for o in expected if o is not inst], axis=0)
               for k, inst in enumerate(expected, 1)}  # pixels of that object only
        masks = _by_stamp(rig.masks)
        orders = set()
        for det in list(rig.dets.msgs):
            ids = [d.id for d in det.detections]
            orders.add(tuple(ids))
            assert sorted(ids) == ["1", "2", "3"]
            labels = mask_array(masks[key(det.header)]) if key(det.header) in masks else None
            for d in det.detections:
                x0, y0, x1, y1 = box_of[d.id]  # each id stays on its own object
                assert d.bbox.center.position.x == pytest.approx((x0 + x1) / 2)
                if labels is not None:  # the mask's pixels of value id are that object's
                    assert own[d.id].any() and np.all(labels[own[d.id]] == int(d.id))
        assert len(orders) == 2, "the objects came in both orders, the ids with them"
        for det3d in list(rig.dets3d.msgs):
            assert sorted(d.id for d in det3d.detections) == ["1", "2", "3"]
    finally:
        rig.close()


def _diagnostic_values(collector: Collector, ns: str) -> list[tuple[bytes, str, dict]]:
    out = []
    for arr in list(collector.msgs):
        for st in arr.status:
            if st.name.startswith(f"{ns}/saom") or st.name.startswith("saom"):
                values = {kv.key: kv.value for kv in st.values}
                if "frames with 3D" in values:
                    out.append((st.level, st.message, values))
    return out


@pytest.mark.parametrize("case", ["size", "encoding", "focal", "frame"])
def test_bad_depth_or_camera_info_warns_once_and_keeps_2d(ros, ckpt, case):
    name = f"rgbd_bad_{case}"
    diags = Collector(ros.tester, DiagnosticArray, "/diagnostics")
    rig = Rig(ros, name, ckpt)
    try:
        kw = {"size": {"depth_m": np.full((H // 2, W // 2), 1.0, np.float32)},
              "encoding": {"encoding": "rgb16"}, "focal": {"info_fx": 0.0},
              "frame": {"depth_frame": "camera_depth_optical_frame"}}[case]
        rig.until([rig.dets], 4, 0, **kw)
        assert all(_empty(d, m) for d, m in zip(list(rig.dets3d.msgs), list(rig.markers.msgs), strict=False))
        assert rig.node.is_active
        reason = {"size": "colour image is", "encoding": "not supported", "focal": "focal length",
                  "frame": "registered to the colour camera"}[case]
        depth_warnings = [w for w in rig.warnings if w.startswith("no 3D output")]
        assert len(depth_warnings) == 1 and reason in depth_warnings[0], rig.warnings  # throttled: once
        counts = rig.node.step.objects.counts
        assert counts.frames_bad_depth >= 4 and counts.frames_3d == 0
        assert wait_until(lambda: any(int(v["frames with unusable depth (2D only)"]) >= 1
                                      for _, _, v in _diagnostic_values(diags, name)), 10)
        level, message, _ = _diagnostic_values(diags, name)[-1]
        assert level == b"\x01" and "2D only" in message and reason in message
        # good depth afterwards: 3D comes back
        n = len(rig.dets3d)
        rig.until([rig.dets3d], n + 1, 100)
        assert wait_until(lambda: rig.dets3d.msgs[-1].detections != [], 5)
    finally:
        rig.close()  # (the tester's subscriptions stay: destroying one while the executor spins races it)


def test_colour_without_depth_is_segmented_in_2d_and_counted(ros, ckpt):
    rig = Rig(ros, "rgbd_nodepth", ckpt, depth_wait=0.1)
    try:
        rig.until([rig.dets], 3, 0, depth=False)
        assert all(d.detections == [] for d in list(rig.dets3d.msgs))
        assert [d.id for d in rig.dets.msgs[-1].detections] == ["1", "2", "3"]
        assert rig.node.step.objects.counts.frames_without_depth >= 3
    finally:
        rig.close()


def test_tracker_and_depth_range_change_at_runtime_the_sync_does_not(ros, ckpt):
    rig = Rig(ros, "rgbd_params", ckpt)
    try:
        results = rig.node.set_parameters([Parameter("track_min_hits", value=1), Parameter("depth_max", value=3.0)])
        assert all(r.successful for r in results)
        assert rig.node.step.objects.tracker.settings.min_hits == 1 and rig.node.step.objects.depth.max_depth == 3.0
        rig.until([rig.dets3d], 1, 0)  # a plane at 1.2 m is within the new range
        refused = rig.node.set_parameters([Parameter("sync_slop", value=0.01)])[0]
        assert not refused.successful and "reload" in refused.reason
        refused = rig.node.set_parameters([Parameter("depth_min", value=5.0)])[0]
        assert not refused.successful and "depth_min must be smaller" in refused.reason
    finally:
        rig.close()


def test_depth_reliability_follows_a_camera_that_starts_after_the_node(ros, ckpt):
    from saom_ros.pairing import CAMERA_INFO, DEPTH

    rig = Rig(ros, "rgbd_late_camera", ckpt, start_first=True)
    try:
        assert all(rig.node.rgbd.subs[s].reliability == "reliable" or not rig.node.rgbd.subs[s].settled
                   for s in (DEPTH, CAMERA_INFO))
        # the tester's reliable publishers now exist: re-checked with the diagnostics, subscribed reliably
        assert wait_until(lambda: all(rig.node.rgbd.subs[s].reliability == "reliable" and rig.node.rgbd.subs[s].settled
                                      for s in (DEPTH, CAMERA_INFO)), 10)
        rig.until([rig.dets3d], 1, 0)
    finally:
        rig.close()


def test_a_distorted_camera_on_image_raw_is_warned_about_once(ros, ckpt):
    rig = Rig(ros, "rgbd_distorted", ckpt, image_topic="image_raw")
    try:
        rig.until([rig.dets3d], 3, 0, distortion=[0.1, -0.05, 0.0, 0.0, 0.0])
        warned = [w for w in rig.warnings if "unrectified" in w]
        assert len(warned) == 1 and f"{rig.ns}/image_raw" in warned[0], rig.warnings
    finally:
        rig.close()


def _empty(det3d, markers) -> bool:
    return det3d.detections == [] and [m.action for m in markers.markers] == [3]  # DELETEALL only


def test_every_frame_publishes_its_3d_and_stopping_clears_it(ros, ckpt):
    """A frame without depth, a pause and a deactivate each leave rviz and a planner without stale objects."""
    diags = Collector(ros.tester, DiagnosticArray, "/diagnostics")
    rig = Rig(ros, "rgbd_stale", ckpt, depth_wait=0.1)
    try:
        nxt = rig.until([rig.dets3d, rig.markers], 1, 0)
        assert rig.dets3d.msgs[-1].detections and len(rig.markers.msgs[-1].markers) == 7
        first_without = nxt  # frames from here on come without depth (image_msg(i) is stamped 1000 + i s)
        nxt = rig.until([rig.dets], len(rig.dets) + 2, nxt, depth=False)

        def without_depth(msgs, header=lambda m: m.header):
            return [m for m in list(msgs) if header(m).stamp.sec >= 1000 + first_without]

        def markers_of():
            return {key(m.markers[0].header): m for m in without_depth(rig.markers.msgs, lambda m: m.markers[0].header)}

        assert wait_until(lambda: len(without_depth(rig.dets3d.msgs)) >= 2, 5)
        assert wait_until(lambda: {key(d.header) for d in without_depth(rig.dets3d.msgs)} <= set(markers_of()), 5)
        stamps_2d = _by_stamp(rig.dets)
        for det3d in without_depth(rig.dets3d.msgs):  # one (empty) 3D message per 2D frame
            assert key(det3d.header) in stamps_2d and _empty(det3d, markers_of()[key(det3d.header)])
        assert "no depth" in rig.node.step.objects.counts.empty_because
        assert wait_until(lambda: any("no depth" in v["latest 3D outputs empty because"]
                                      for _, _, v in _diagnostic_values(diags, "rgbd_stale")), 10)
        rig.until([rig.dets3d], len(rig.dets3d) + 1, nxt + 10)  # with depth again
        assert wait_until(lambda: rig.dets3d.msgs[-1].detections != [], 5)
        # pause: cleared (a frame in flight may come first, never after the clearing)
        assert rig.node.set_parameters([Parameter("enable", value=False)])[0].successful
        assert wait_until(lambda: _empty(rig.dets3d.msgs[-1], rig.markers.msgs[-1]), 5)
        time.sleep(0.3)
        assert _empty(rig.dets3d.msgs[-1], rig.markers.msgs[-1])
        assert rig.node.set_parameters([Parameter("enable", value=True)])[0].successful
        rig.until([rig.dets3d], len(rig.dets3d) + 1, nxt + 20)
        assert wait_until(lambda: rig.dets3d.msgs[-1].detections != [], 5)
        from rclpy.lifecycle import TransitionCallbackReturn

        assert rig.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert wait_until(lambda: _empty(rig.dets3d.msgs[-1], rig.markers.msgs[-1]), 5)
    finally:
        rig.close()


class StandInBuffer:
    """tf2_ros.Buffer's lookup_transform: camera -> base_link a fixed shift, or an error."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.calls = fail, []

    def lookup_transform(self, target, source, time, timeout=None):
        from geometry_msgs.msg import TransformStamped

        self.calls.append((target, source, time.nanoseconds))
        if self.fail:
            raise LookupError(f"{target} does not exist")  # tf2.LookupException in ROS
        msg = TransformStamped()
        msg.header.frame_id, msg.child_frame_id = target, source
        msg.transform.translation.z = 2.0
        msg.transform.rotation.w = 1.0
        return msg


@pytest.mark.parametrize("fail", [False, True], ids=["found", "missing"])
def test_target_frame_transforms_3d_at_the_image_stamp(ros, ckpt, fail):
    buffer = StandInBuffer(fail)
    rig = Rig(ros, f"rgbd_tf_{'missing' if fail else 'found'}", ckpt, tf_buffer=buffer, target_frame="base_link")
    try:
        rig.until([rig.dets, rig.dets3d, rig.markers], 2, 0)
        det3d = rig.dets3d.msgs[-1]
        assert det3d.header.frame_id == "base_link" and rig.markers.msgs[-1].markers[0].header.frame_id == "base_link"
        colour = _by_stamp(rig.dets)
        stamp = next(k for k in colour if k[:2] == key(det3d.header)[:2])
        source = stamp[2]
        assert ("base_link", source, stamp[0] * 10**9 + stamp[1]) in buffer.calls  # at the image stamp
        if fail:
            assert _empty(det3d, rig.markers.msgs[-1]) and len(colour[stamp].detections) == 3  # 2D goes on
            assert any("no transform" in w and "base_link" in w for w in rig.warnings), rig.warnings
            assert rig.node.step.objects.counts.frames_no_transform >= 2
        else:
            assert [d.id for d in det3d.detections] == ["1", "2", "3"]
            # the camera sees them 1.2 m ahead and more; the transform moves them 2 m farther
            assert all(d.bbox.center.position.z > 2.0 + PLANE_M for d in det3d.detections)
    finally:
        rig.close()


def test_the_node_and_saom_bag_give_the_same_ids_on_the_same_recording(ros, ckpt, tmp_path):
    """Both run the same per-frame step (saom_ros.frame_step), tracker included: the objects come in
    another order every other frame, so ids that were ranks in the frame would differ."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import Reader, Writer

    from saom_ros.bag import run_bag
    from saom_ros.msgtypes import typestore

    n = 6
    rig = Rig(ros, "rgbd_bag_twin", ckpt, segmenter_cls=ShufflingSegmenter)
    recording = []
    try:
        for i in range(n):  # one frame at a time: the node segments every one (none dropped)
            color = rig.frame(i)
            plane = np.full((H, W), PLANE_M, np.float32)
            recording.append((color, depth_to_message(T, color.header, plane, "16UC1"),
                              CameraInfo(header=color.header, width=W, height=H,
                                         k=[50.0, 0.0, 31.5, 0.0, 50.0, 23.5, 0.0, 0.0, 1.0])))
            assert rig.dets.wait(i + 1, 10) and rig.dets3d.wait(i + 1, 10), f"frame {i} not segmented"
        node_ids = {key(d.header)[:2]: [x.id for x in d.detections] for d in list(rig.dets.msgs)}
        node_ids_3d = {key(d.header)[:2]: [x.id for x in d.detections] for d in list(rig.dets3d.msgs)}
    finally:
        rig.close()
    topics = {"/cam/color": "sensor_msgs/msg/Image", "/cam/depth": "sensor_msgs/msg/Image",
              "/cam/info": "sensor_msgs/msg/CameraInfo"}
    with Writer(tmp_path / "rec", version=8) as writer:
        store = typestore()
        conns = [writer.add_connection(t, m, typestore=store) for t, m in topics.items()]
        for i, msgs in enumerate(recording):
            for k, (conn, msg) in enumerate(zip(conns, msgs, strict=True)):
                writer.write(conn, (1000 + i) * 10**9 + k, serialize_message(msg))
    summary = run_bag(ShufflingSegmenter(), tmp_path / "rec", tmp_path / "out", "/cam/color", progress=False,
                      depth_topic="/cam/depth", camera_info_topic="/cam/info", sync_slop=0.02)
    assert summary.segmented == n and summary.without_depth == 0
    bag_ids: dict = {}
    bag_ids_3d: dict = {}
    with Reader(tmp_path / "out") as reader:
        for conn, _, raw in reader.messages():
            if conn.topic in ("/saom_node/detections", "/saom_node/detections_3d"):
                msg = store.deserialize_cdr(raw, conn.msgtype)
                target = bag_ids if conn.topic.endswith("detections") else bag_ids_3d
                target[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = [x.id for x in msg.detections]
    assert len(node_ids) == n and bag_ids == node_ids and bag_ids_3d == node_ids_3d
    assert len({tuple(ids) for ids in node_ids.values()}) == 2  # both orders came, the ids with their objects
