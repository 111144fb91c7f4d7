"""Message classes for building outputs: rclpy's generated ones (node) or rosbags' (bag tool, tests).

`conversions` builds every message through a `MessageTypes` namespace, so the node and `saom bag`
share one code path. Both kinds of classes take every field as a keyword argument; only the
representation of `uint8[]` fields differs (array.array for rclpy, numpy for rosbags): `u8`.

`VISION_MSGS_DEFINITIONS` are the vision_msgs 4.1.1 message definitions (fields only; Apache-2.0,
ros-perception/vision_msgs) that rosbags needs to write and read vision_msgs without ROS. They
are the fields of ros/vision_msgs/msg/*.msg (a unit test keeps the two identical, type hashes
included).
"""
from __future__ import annotations

import array
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

VISION_MSGS_DEFINITIONS: dict[str, str] = {
    "BoundingBox2D": """\
vision_msgs/Pose2D center
float64 size_x
float64 size_y
""",
    "BoundingBox2DArray": """\
std_msgs/Header header
vision_msgs/BoundingBox2D[] boxes
""",
    "BoundingBox3D": """\
geometry_msgs/Pose center
geometry_msgs/Vector3 size
""",
    "BoundingBox3DArray": """\
std_msgs/Header header
vision_msgs/BoundingBox3D[] boxes
""",
    "Classification": """\
std_msgs/Header header
ObjectHypothesis[] results
""",
    "Detection2D": """\
std_msgs/Header header
ObjectHypothesisWithPose[] results
BoundingBox2D bbox
string id
""",
    "Detection2DArray": """\
std_msgs/Header header
Detection2D[] detections
""",
    "Detection3D": """\
std_msgs/Header header
ObjectHypothesisWithPose[] results
BoundingBox3D bbox
string id
""",
    "Detection3DArray": """\
std_msgs/Header header
Detection3D[] detections
""",
    "LabelInfo": """\
std_msgs/Header header
vision_msgs/VisionClass[] class_map
float32 threshold
""",
    "ObjectHypothesis": """\
string class_id
float64 score
""",
    "ObjectHypothesisWithPose": """\
ObjectHypothesis hypothesis
geometry_msgs/PoseWithCovariance pose
""",
    "Point2D": """\
float64 x
float64 y
""",
    "Pose2D": """\
vision_msgs/Point2D position
float64 theta
""",
    "VisionClass": """\
uint16 class_id
string class_name
""",
    "VisionInfo": """\
std_msgs/Header header
string method
string database_location
int32 database_version
""",
}


@dataclass(frozen=True)
class MessageTypes:
    """The message classes the outputs are made of, from one implementation."""

    Time: Any
    Header: Any
    Image: Any
    CompressedImage: Any
    Detection2DArray: Any
    Detection2D: Any
    ObjectHypothesisWithPose: Any
    ObjectHypothesis: Any
    BoundingBox2D: Any
    Pose2D: Any
    Point2D: Any
    PoseWithCovariance: Any
    Pose: Any
    Point: Any
    Quaternion: Any
    LabelInfo: Any
    VisionClass: Any
    u8: Callable[[memoryview], Any]  # value for a uint8[] field from a byte buffer (one copy at most)


_NAMES = {
    "Time": "builtin_interfaces/msg/Time",
    "Header": "std_msgs/msg/Header",
    "Image": "sensor_msgs/msg/Image",
    "CompressedImage": "sensor_msgs/msg/CompressedImage",
    "Detection2DArray": "vision_msgs/msg/Detection2DArray",
    "Detection2D": "vision_msgs/msg/Detection2D",
    "ObjectHypothesisWithPose": "vision_msgs/msg/ObjectHypothesisWithPose",
    "ObjectHypothesis": "vision_msgs/msg/ObjectHypothesis",
    "BoundingBox2D": "vision_msgs/msg/BoundingBox2D",
    "Pose2D": "vision_msgs/msg/Pose2D",
    "Point2D": "vision_msgs/msg/Point2D",
    "PoseWithCovariance": "geometry_msgs/msg/PoseWithCovariance",
    "Pose": "geometry_msgs/msg/Pose",
    "Point": "geometry_msgs/msg/Point",
    "Quaternion": "geometry_msgs/msg/Quaternion",
    "LabelInfo": "vision_msgs/msg/LabelInfo",
    "VisionClass": "vision_msgs/msg/VisionClass",
}


def rclpy_classes(names: dict[str, str]) -> dict[str, Any]:
    """attribute -> rclpy's generated class, for "pkg/msg/Type" names (needs those ROS 2 packages)."""
    import importlib

    classes = {}
    for attr, name in names.items():
        pkg, _, cls = name.split("/")
        classes[attr] = getattr(importlib.import_module(f"{pkg}.msg"), cls)
    return classes


def rosbags_classes(names: dict[str, str], store: Any = None) -> dict[str, Any]:
    """attribute -> rosbags' dataclass for "pkg/msg/Type" names (pure Python)."""
    store = store or typestore()
    return {attr: store.types[name] for attr, name in names.items()}


def _u8_view(data: Any) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def rclpy_types() -> MessageTypes:
    """rclpy's generated classes (needs a ROS 2 environment with vision_msgs)."""
    return MessageTypes(**rclpy_classes(_NAMES), u8=_u8_array)


def _u8_array(data) -> array.array:
    out = array.array("B")
    out.frombytes(data)  # a single memcpy (the message setter takes array.array as is)
    return out


@cache
def typestore():
    """A rosbags typestore (ROS 2 Kilted; Humble and Jazzy share these types) with vision_msgs registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types: dict[str, Any] = {}
    for name, text in VISION_MSGS_DEFINITIONS.items():
        types.update(get_types_from_msg(text, f"vision_msgs/msg/{name}"))
    store.register(types)
    return store


def rosbags_types(store=None) -> MessageTypes:
    """rosbags' dataclasses (pure Python: the bag tool and the ROS-free tests)."""
    return MessageTypes(**rosbags_classes(_NAMES, store), u8=_u8_view)
