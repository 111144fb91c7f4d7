"""3D outputs and RGB-D inputs as ROS messages, built without a running node (the node and `saom bag`).

Outputs, all with the colour image's stamp, one entry per instance that has a 3D result
(`Instance.object3d`), named by `instance_id` (the track id when tracking is on, else the instance's
number in the frame, which is its value in `~/instance_mask`). They are in the camera's optical
frame, or in another frame given as the `RigidTransform` from the camera's into it (`to`: the node's
`target_frame`, looked up with tf2); a frame without 3D gives an empty array and cloud and markers
that only delete (so rviz never keeps stale boxes).
- vision_msgs/Detection3DArray: box centre and size (metres, axis-aligned in the camera frame, so the
  orientation is the camera frame's), class id (as in Detection2D: the class index as a string) and
  score. The pose (hypothesis and bbox.center alike) is the *completed box centre*, which lies behind
  the measured surface (geometry3d `complete_depth`; the surface centroid is not published); its
  covariance is the points' spread about it (`pose_covariance`), never all zero.
- sensor_msgs/PointCloud2: every object's points as PCL's PointXYZRGBL (x, y, z float32, rgb the
  pixel's colour packed as PCL does, label uint32 = the object's id), plus class_id (uint16).
- visualization_msgs/MarkerArray: a DELETEALL marker, then per object a translucent CUBE (namespace
  "boxes") and a TEXT_VIEW_FACING label "class id" above it (namespace "labels"), both with marker id
  = the object's id, so rviz shows the current frame only.

Inputs: `depth_from_message` (sensor_msgs/Image 16UC1/mono16 millimetres or 32FC1 metres) and
`camera_from_info` (sensor_msgs/CameraInfo), with one clear DepthInputError per problem.
"""
from __future__ import annotations

import colorsys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from saom_core.errors import ImageError
from saom_core.geometry3d import (
    IDENTITY,
    CameraIntrinsics,
    DepthSettings,
    Object3D,
    RigidTransform,
    add_objects3d,
    depth_in_metres,
)
from saom_core.infer.types import Instance, Segmentation

from .conversions import _u8_buffer, instance_id
from .msgtypes import _u8_array, _u8_view, rclpy_classes, rosbags_classes

DEPTH_ENCODINGS = {"16uc1": ("<u2", ">u2", 0.001), "mono16": ("<u2", ">u2", 0.001), "32fc1": ("<f4", ">f4", 1.0)}
# PCL's PointXYZRGBL fields (x, y, z, rgb packed in a float32, label = the object's id) plus class_id
POINT_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4"), ("label", "<u4"),
                        ("class_id", "<u2")], align=True)
_POINT_FIELDS: dict[str, tuple[Any, int]] = dict(POINT_DTYPE.fields or {})  # name -> (dtype, byte offset)
_POINTFIELD_TYPES = {"<f4": 7, "<u4": 6, "<u2": 4}  # sensor_msgs/PointField FLOAT32, UINT32, UINT16
ORIENTATION_VARIANCE = float(np.pi**2 / 3)  # rad^2: an angle uniform in [-pi, pi]
_MARKER_CUBE, _MARKER_TEXT, _MARKER_DELETEALL, _MARKER_ADD = 1, 9, 3, 0


class DepthInputError(ImageError):
    """Depth or camera_info that cannot give 3D for this colour frame (warned about, never fatal)."""


@dataclass(frozen=True)
class Messages3D:
    """The message classes of the 3D outputs, from one implementation (rclpy or rosbags)."""

    Header: Any
    Time: Any
    Duration: Any
    Detection3DArray: Any
    Detection3D: Any
    BoundingBox3D: Any
    ObjectHypothesisWithPose: Any
    ObjectHypothesis: Any
    PoseWithCovariance: Any
    Pose: Any
    Point: Any
    Quaternion: Any
    Vector3: Any
    PointCloud2: Any
    PointField: Any
    MarkerArray: Any
    Marker: Any
    ColorRGBA: Any
    CompressedImage: Any
    MeshFile: Any
    u8: Callable[[memoryview], Any]


_NAMES = {
    "Header": "std_msgs/msg/Header", "Time": "builtin_interfaces/msg/Time",
    "Duration": "builtin_interfaces/msg/Duration",
    "Detection3DArray": "vision_msgs/msg/Detection3DArray", "Detection3D": "vision_msgs/msg/Detection3D",
    "BoundingBox3D": "vision_msgs/msg/BoundingBox3D",
    "ObjectHypothesisWithPose": "vision_msgs/msg/ObjectHypothesisWithPose",
    "ObjectHypothesis": "vision_msgs/msg/ObjectHypothesis",
    "PoseWithCovariance": "geometry_msgs/msg/PoseWithCovariance",
    "Pose": "geometry_msgs/msg/Pose", "Point": "geometry_msgs/msg/Point", "Quaternion": "geometry_msgs/msg/Quaternion",
    "Vector3": "geometry_msgs/msg/Vector3", "PointCloud2": "sensor_msgs/msg/PointCloud2",
    "PointField": "sensor_msgs/msg/PointField", "MarkerArray": "visualization_msgs/msg/MarkerArray",
    "Marker": "visualization_msgs/msg/Marker", "ColorRGBA": "std_msgs/msg/ColorRGBA",
    "CompressedImage": "sensor_msgs/msg/CompressedImage", "MeshFile": "visualization_msgs/msg/MeshFile",
}


def rclpy_types_3d() -> Messages3D:
    """rclpy's generated classes (ROS 2 with vision_msgs and visualization_msgs)."""
    return Messages3D(**rclpy_classes(_NAMES), u8=_u8_array)


def rosbags_types_3d(store=None) -> Messages3D:
    """rosbags' dataclasses (pure Python: `saom bag` and the ROS-free tests)."""
    return Messages3D(**rosbags_classes(_NAMES, store), u8=_u8_view)


def _with_3d(seg: Segmentation) -> list[tuple[int, Instance, Object3D]]:
    """(published id, instance, its 3D object) for the instances that have one."""
    return [(instance_id(inst, k), inst, inst.object3d) for k, inst in enumerate(seg.instances, 1)
            if inst.object3d is not None]


def _pose(M: Messages3D, centre: np.ndarray, to: RigidTransform) -> Any:
    x, y, z = (float(v) for v in to.apply(np.asarray(centre, dtype=np.float64)))
    qx, qy, qz, qw = (float(v) for v in to.quaternion)  # the box's axes are the camera's
    return M.Pose(position=M.Point(x=x, y=y, z=z), orientation=M.Quaternion(x=qx, y=qy, z=qz, w=qw))


def pose_covariance(obj: Object3D, to: RigidTransform = IDENTITY) -> np.ndarray:
    """The 36 values of a PoseWithCovariance (row-major x, y, z, rotations about x, y, z): the box
    centre's from the points' spread (`Object3D.covariance`), the orientation's unknown (an
    axis-aligned box says nothing about the object's turn: a uniform angle's variance)."""
    cov = np.zeros((6, 6))
    cov[:3, :3] = to.rotate_covariance(obj.covariance)
    cov[3:, 3:] = np.eye(3) * ORIENTATION_VARIANCE
    return cov.reshape(-1)


def make_detection3d_array(M: Messages3D, header: Any, seg: Segmentation, to: RigidTransform = IDENTITY) -> Any:
    """`header`'s frame is the camera's, or the one `to` maps the camera frame into."""
    detections = []
    for key, inst, obj in _with_3d(seg):
        sx, sy, sz = (float(v) for v in obj.size)
        hypothesis = M.ObjectHypothesisWithPose(
            hypothesis=M.ObjectHypothesis(class_id=str(int(inst.class_id)), score=float(inst.score)),
            pose=M.PoseWithCovariance(pose=_pose(M, obj.centre, to), covariance=pose_covariance(obj, to)))
        bbox = M.BoundingBox3D(center=_pose(M, obj.centre, to), size=M.Vector3(x=sx, y=sy, z=sz))
        detections.append(M.Detection3D(header=header, results=[hypothesis], bbox=bbox, id=str(key)))
    return M.Detection3DArray(header=header, detections=detections)


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours -> PCL's packed `rgb` field: 0x00RRGGBB as a float32's bits."""
    rgb = rgb.astype(np.uint32)
    return ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)


def make_point_cloud(M: Messages3D, header: Any, seg: Segmentation, image: np.ndarray,
                     to: RigidTransform = IDENTITY) -> Any:
    """All objects' points in one unorganised cloud (height 1), coloured from `image` (the (H, W, 3)
    RGB frame), fields as POINT_DTYPE."""
    parts = []
    for key, inst, obj in _with_3d(seg):
        part = np.zeros(len(obj.points), dtype=POINT_DTYPE)
        pts = to.apply(obj.points)
        part["x"], part["y"], part["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
        part["rgb"] = pack_rgb(image[obj.pixels[:, 0], obj.pixels[:, 1]])
        part["label"], part["class_id"] = key, int(inst.class_id)
        parts.append(part)
    cloud = np.concatenate(parts) if parts else np.empty(0, dtype=POINT_DTYPE)
    fields = [M.PointField(name=name, offset=int(offset), datatype=_POINTFIELD_TYPES[dtype.str], count=1)
              for name, (dtype, offset) in _POINT_FIELDS.items()]
    return M.PointCloud2(header=header, height=1, width=int(len(cloud)), fields=fields, is_bigendian=False,
                         point_step=POINT_DTYPE.itemsize, row_step=POINT_DTYPE.itemsize * len(cloud),
                         data=M.u8(memoryview(cloud.tobytes())), is_dense=True)


def class_colour(class_id: int) -> tuple[float, float, float]:
    """A stable, distinct colour per class (golden-ratio hues)."""
    return colorsys.hsv_to_rgb((class_id * 0.618033988749895) % 1.0, 0.75, 0.95)


def _marker(M: Messages3D, header: Any, ns: str, key: int, kind: int, to: RigidTransform, action: int = _MARKER_ADD,
            centre: np.ndarray | None = None, scale=(0.0, 0.0, 0.0), rgba=(0.0, 0.0, 0.0, 0.0), text: str = "") -> Any:
    return M.Marker(
        header=header, ns=ns, id=int(key), type=kind, action=action,
        pose=_pose(M, np.zeros(3) if centre is None else centre, to),
        scale=M.Vector3(x=float(scale[0]), y=float(scale[1]), z=float(scale[2])),
        color=M.ColorRGBA(r=float(rgba[0]), g=float(rgba[1]), b=float(rgba[2]), a=float(rgba[3])),
        lifetime=M.Duration(sec=0, nanosec=0), frame_locked=False, points=[], colors=[], texture_resource="",
        texture=M.CompressedImage(header=header, format="", data=M.u8(memoryview(b""))), uv_coordinates=[],
        text=text, mesh_resource="", mesh_file=M.MeshFile(filename="", data=M.u8(memoryview(b""))),
        mesh_use_embedded_materials=False)


def make_markers(M: Messages3D, header: Any, seg: Segmentation, to: RigidTransform = IDENTITY) -> Any:
    """DELETEALL, then the objects' boxes and labels: rviz shows this frame's objects only."""
    markers = [_marker(M, header, "", 0, _MARKER_CUBE, to, action=_MARKER_DELETEALL)]
    for key, inst, obj in _with_3d(seg):
        r, g, b = class_colour(int(inst.class_id))
        size = np.maximum(obj.size, 1e-3)  # rviz draws nothing for a zero scale
        box = _marker(M, header, "boxes", key, _MARKER_CUBE, to, centre=obj.centre, scale=size, rgba=(r, g, b, 0.4))
        markers.append(box)
        above = obj.centre - np.array([0.0, size[1] / 2 + 0.03, 0.0])  # optical frame: -y is up
        markers.append(_marker(M, header, "labels", key, _MARKER_TEXT, to, centre=above, scale=(0.0, 0.0, 0.05),
                               rgba=(1.0, 1.0, 1.0, 1.0), text=f"{inst.class_name} {key}"))
    return M.MarkerArray(markers=markers)


@dataclass
class Outputs3D:
    detections: Any
    cloud: Any  # None when not asked for (the large one)
    markers: Any


def make_outputs_3d(M: Messages3D, header: Any, seg: Segmentation, image: np.ndarray, cloud: bool = True,
                    to: RigidTransform = IDENTITY) -> Outputs3D:
    """The 3D outputs of one frame; a frame without 3D gives an empty array and cloud, and markers
    that delete the previous frame's."""
    return Outputs3D(make_detection3d_array(M, header, seg, to),
                     make_point_cloud(M, header, seg, image, to) if cloud else None,
                     make_markers(M, header, seg, to))


def transform_from_msg(msg: Any) -> RigidTransform:
    """geometry_msgs/TransformStamped (tf2's lookup_transform(target, source, ...)) -> the transform
    that maps source-frame points into the target frame."""
    t, q = msg.transform.translation, msg.transform.rotation
    return RigidTransform(np.array([t.x, t.y, t.z], dtype=np.float64), (q.x, q.y, q.z, q.w))


# ---------------------------------------------------------------------------------------------
# inputs


def depth_from_message(msg: Any, width: int, height: int) -> np.ndarray:
    """sensor_msgs/Image depth -> (H, W) float32 metres (0 = no depth), checked against the colour size."""
    encoding = str(msg.encoding).strip().lower()
    if encoding not in DEPTH_ENCODINGS:
        raise DepthInputError(
            f"depth encoding {msg.encoding!r} is not supported (16UC1 or mono16 in millimetres, 32FC1 in metres)"
        )
    little, big, scale = DEPTH_ENCODINGS[encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if (h, w) != (int(height), int(width)):
        raise DepthInputError(f"depth image is {w}x{h} but the colour image is {width}x{height}: "
                              "use depth registered to the colour camera (e.g. RealSense align_depth)")
    dtype = np.dtype(big if msg.is_bigendian else little)
    if step < w * dtype.itemsize:
        raise DepthInputError(f"depth step {step} is smaller than width {w} x {dtype.itemsize} bytes")
    buf = _u8_buffer(msg.data)
    if buf.size < h * step:
        raise DepthInputError(f"depth data has {buf.size} bytes, {w}x{h} {encoding} with step {step} needs {h * step}")
    rows = buf[: h * step].reshape(h, step)[:, : w * dtype.itemsize]
    raw = np.ascontiguousarray(rows).view(dtype).reshape(h, w)
    return depth_in_metres(raw.astype(dtype.newbyteorder("=")), depth_scale=scale)


def camera_from_info(msg: Any, width: int, height: int) -> CameraIntrinsics:
    """sensor_msgs/CameraInfo -> the intrinsics of the image it describes, as image_geometry's
    PinholeCameraModel reads them: P (the rectified image's projection: a registered depth image
    and image_rect are rectified), K only where P is unset, then binning and the ROI applied.
    Checked against the size of the colour image it is paired with."""
    p = [float(v) for v in msg.p]
    k = [float(v) for v in msg.k]
    if len(p) == 12 and p[0] > 0 and p[5] > 0:
        fx, fy, cx, cy = p[0], p[5], p[2], p[6]
    elif len(k) == 9 and k[0] > 0 and k[4] > 0:
        fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    else:
        raise DepthInputError(f"camera_info has no usable focal length (P = {p}, K = {k}); is the camera calibrated?")
    bx, by = max(1, int(msg.binning_x)), max(1, int(msg.binning_y))
    roi = msg.roi
    whole = int(roi.width) == 0 or int(roi.height) == 0  # an unset ROI is the full image
    x0, y0 = (0, 0) if whole else (int(roi.x_offset), int(roi.y_offset))
    info_w, info_h = (int(msg.width), int(msg.height)) if whole else (int(roi.width), int(roi.height))
    if (info_w, info_h) != (0, 0) and (info_w // bx, info_h // by) != (int(width), int(height)):
        raise DepthInputError(f"camera_info is for {info_w // bx}x{info_h // by} images (binning {bx}x{by}"
                              f"{'' if whole else ', ROI'}) but the colour image is {width}x{height}")
    return CameraIntrinsics(fx / bx, fy / by, (cx - x0) / bx, (cy - y0) / by)


def unrectified_warning(info_msg: Any, image_topic: str) -> str:
    """Why 3D may be off for this camera ("" when nothing is): a distorted lens (D not zero) while the
    colour input is the raw, unrectified `image_raw` (3D assumes rectified images: P has no distortion)."""
    if image_topic.rstrip("/").rsplit("/", 1)[-1] != "image_raw" or not any(float(d) for d in info_msg.d):
        return ""
    return (f"{image_topic} is unrectified but camera_info has distortion D = {[float(d) for d in info_msg.d]}: "
            "3D positions are off towards the image borders; use the rectified image (image_rect_color, "
            "image_proc) with registered depth")


def check_registration(color_frame_id: str, depth_msg: Any, info_msg: Any) -> None:
    """Depth and camera_info must be in the colour image's frame (depth registered to colour)."""
    for what, msg in (("depth", depth_msg), ("camera_info", info_msg)):
        if msg.header.frame_id != color_frame_id:
            raise DepthInputError(
                f"{what} is in frame {msg.header.frame_id!r} but the colour image in {color_frame_id!r}: use depth "
                "registered to the colour camera (depth_registered/image_rect, RealSense "
                "aligned_depth_to_color/image_raw) and the colour camera's camera_info")


def frame_to_3d(seg: Segmentation, depth_msg: Any, info_msg: Any, color_frame_id: str,
                settings: DepthSettings = DepthSettings()) -> int:
    """Set `object3d` on the instances of `seg` from a depth and a camera_info message, registered to
    the colour frame `color_frame_id`; returns how many instances got none. Raises DepthInputError for
    unusable inputs (nothing is set then)."""
    check_registration(color_frame_id, depth_msg, info_msg)
    depth = depth_from_message(depth_msg, seg.width, seg.height)
    camera = camera_from_info(info_msg, seg.width, seg.height)
    return add_objects3d(seg, depth, camera, settings)


def depth_to_message(T: Any, header: Any, depth_m: np.ndarray, encoding: str = "16UC1") -> Any:
    """A depth sensor_msgs/Image from metres (tests, synthetic streams): 16UC1 millimetres or 32FC1 metres."""
    if encoding == "16UC1":
        data = np.where(np.isfinite(depth_m), np.round(depth_m * 1000.0), 0).clip(0, 65535).astype("<u2")
    elif encoding == "32FC1":
        data = np.asarray(depth_m, dtype="<f4")
    else:
        raise ValueError(f"cannot encode depth as {encoding}")
    h, w = depth_m.shape
    return T.Image(header=header, height=int(h), width=int(w), encoding=encoding, is_bigendian=0,
                   step=int(w * data.itemsize), data=T.u8(np.ascontiguousarray(data).data.cast("B")))
