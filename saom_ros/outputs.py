"""saom_node's publishers (rclpy wiring): which outputs a configuration has, their QoS, and the rule
of the 3D outputs: every processed frame replaces the objects of the last one, and a clearing
(deactivate, `enable: false`) is never undone by a frame that was still in flight.

Each publisher takes rclpy's `qos_overrides` (saom_ros.qos); outputs are created at configure and
destroyed at cleanup, as lifecycle publishers (silent while the node is inactive).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from rclpy.lifecycle import LifecycleNode
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import Image, PointCloud2
from vision_msgs.msg import Detection2DArray, Detection3DArray, LabelInfo
from visualization_msgs.msg import MarkerArray

from saom_core.infer.types import Segmentation

from . import qos
from .conversions import make_label_info
from .objects3d import Messages3D, Outputs3D, make_outputs_3d, rclpy_types_3d
from .params import NodeParams

# key -> (message type, topic, latched)
OUTPUTS: dict[str, tuple[Any, str, bool]] = {
    "detections": (Detection2DArray, "~/detections", False),
    "instance_mask": (Image, "~/instance_mask", False),
    "label_info": (LabelInfo, "~/label_info", True),
    "overlay": (Image, "~/overlay", False),  # used while publish_overlay (runtime-safe)
    "prompted_detections": (Detection2DArray, "~/prompted/detections", False),
    "prompted_masks": (Image, "~/prompted/masks", False),
    "detections_3d": (Detection3DArray, "~/detections_3d", False),
    "objects": (PointCloud2, "~/objects", False),
    "markers": (MarkerArray, "~/markers", False),
}
PROMPTED_OUTPUTS = ("prompted_detections", "prompted_masks")  # with prompts_enabled
OUTPUTS_3D = ("detections_3d", "objects", "markers")  # with depth_enabled


def output_keys(params: NodeParams) -> list[str]:
    """The keys of OUTPUTS a configuration publishes."""
    return [key for key in OUTPUTS if (key not in PROMPTED_OUTPUTS or params.prompts_enabled)
            and (key not in OUTPUTS_3D or params.depth_enabled)]


class Publishers:
    """The outputs of one configuration of the node. `lock` is the node's lock: 3D outputs and their
    clearing are published under it, so the two never interleave."""

    def __init__(self, node: LifecycleNode, params: NodeParams, lock: threading.RLock) -> None:
        self.node, self._lock = node, lock
        self._pubs = {
            key: node.create_lifecycle_publisher(OUTPUTS[key][0], OUTPUTS[key][1], qos.output_qos(OUTPUTS[key][2]),
                                                 qos_overriding_options=QoSOverridingOptions.with_default_policies())
            for key in output_keys(params)
        }
        self.M3: Messages3D | None = rclpy_types_3d() if params.depth_enabled else None  # the 3D message classes
        self._frame_3d = params.target_frame  # the frame of the latest 3D outputs (their clearing uses it)

    def __getitem__(self, key: str) -> Any:
        return self._pubs[key]

    def __contains__(self, key: str) -> bool:
        return key in self._pubs

    def wanted(self, key: str) -> bool:
        """Someone subscribes to this output (a volatile topic without subscribers delivers nothing:
        the costly outputs are made only when wanted)."""
        return key in self._pubs and self._pubs[key].get_subscription_count() > 0

    def publish_label_info(self, types: Any, class_names: list[str], score_threshold: float) -> None:
        header = types.Header(stamp=self.node.get_clock().now().to_msg(), frame_id="")
        self._pubs["label_info"].publish(make_label_info(types, header, class_names, score_threshold))

    def publish_3d(self, out: Outputs3D, still_wanted: Callable[[], bool]) -> bool:
        """A frame's 3D outputs, unless `still_wanted()` says they were cleared meanwhile (then this
        frame must not bring them back); True when published."""
        with self._lock:
            if not still_wanted():
                return False
            self._send_3d(out)
        return True

    def clear_3d(self, types: Any) -> None:
        """Empty 3D outputs (markers: DELETEALL), so rviz and a planner drop the last frame's objects."""
        if self.M3 is None:
            return
        header = types.Header(stamp=self.node.get_clock().now().to_msg(), frame_id=self._frame_3d)
        no_image = np.zeros((0, 0, 3), np.uint8)  # no objects: nothing to colour
        with self._lock:
            self._send_3d(make_outputs_3d(self.M3, header, Segmentation(0, 0, []), no_image))

    def _send_3d(self, out: Outputs3D) -> None:
        self._pubs["detections_3d"].publish(out.detections)
        if out.cloud is not None:
            self._pubs["objects"].publish(out.cloud)
        self._pubs["markers"].publish(out.markers)
        self._frame_3d = out.detections.header.frame_id

    def destroy(self) -> None:
        destroy = getattr(self.node, "destroy_lifecycle_publisher", self.node.destroy_publisher)
        for publisher in self._pubs.values():
            destroy(publisher)
        self._pubs = {}
