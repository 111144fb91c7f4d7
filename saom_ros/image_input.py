"""saom_node's colour input (rclpy wiring): the image subscription (sensor_msgs/Image, or
CompressedImage with image_transport compressed) and its reliability.

image_reliability auto takes the camera publisher's reliability; before a publisher appears it
subscribes best effort (which hears any camera) and re-checks on a timer. A `qos_overrides`
reliability for the topic beats image_reliability, auto included. Re-subscription runs under the
node's lock and never after `close` (a deactivate), so no subscription outlives its activation.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from rclpy.node import Node
from rclpy.qos import ReliabilityPolicy
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CompressedImage, Image

try:  # Jazzy and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

from . import qos
from .params import NodeParams

RELIABILITY_RECHECK_S = 1.0  # image_reliability auto: how often to look for the camera publisher


def reliability_overridden(node: Node, topic: str) -> bool:
    """A `qos_overrides.<topic>.subscription.reliability` parameter is given."""
    return f"qos_overrides.{topic}.subscription.reliability" in (getattr(node, "_parameter_overrides", {}) or {})


class ImageInput:
    """The colour subscription of one activation of the node (see the module docstring)."""

    def __init__(self, node: Node, params: NodeParams, topic: str, on_image: Callable[[Any], None],
                 on_incompatible_qos: Callable[[Any], None], lock: threading.RLock, timer_group: Any) -> None:
        self.node, self.params, self.topic = node, params, topic
        self._on_image, self._on_incompatible_qos = on_image, on_incompatible_qos
        self._lock, self._timer_group = lock, timer_group
        self._overridden = reliability_overridden(node, topic)
        self._sub: Any = None
        self._recheck_timer: Any = None
        self._closed = False
        self.reliability = ""  # the reliability subscribed now: best_effort or reliable
        self.subscribe()

    def subscribe(self) -> None:
        """(Re)create the subscription when the reliability to use has changed."""
        node, params = self.node, self.params
        reliability = params.image_reliability
        if reliability == "auto" and not self._overridden:
            found = qos.publishers_reliability(node.get_publishers_info_by_topic(self.topic))
            reliability = found or "best_effort"
            if found is None and self._recheck_timer is None:
                self._recheck_timer = node.create_timer(RELIABILITY_RECHECK_S, self._recheck,
                                                        callback_group=self._timer_group)
            elif found is not None:
                self._cancel_recheck()
                node.get_logger().info(f"image_reliability auto: {self.topic} is published {found}; "
                                       f"subscribing {found}")
        if self._sub is not None and reliability == self.reliability:
            return
        if self._sub is not None:
            node.destroy_subscription(self._sub)
        image_type = CompressedImage if params.image_transport == "compressed" else Image
        events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_qos)
        profile = qos.image_qos(reliability)
        # reliability is declared as an override only when one is given: declared once, a read-only
        # parameter would pin the first reliability for the node's life (auto, reconfigure)
        kinds = qos.OVERRIDABLE_POLICIES if self._overridden else qos.OVERRIDABLE_POLICIES[:2]
        self._sub = node.create_subscription(image_type, self.topic, self._on_image, profile, event_callbacks=events,
                                             qos_overriding_options=QoSOverridingOptions(kinds))
        self.reliability = "reliable" if profile.reliability == ReliabilityPolicy.RELIABLE else "best_effort"

    def _recheck(self) -> None:
        with self._lock:
            if not self._closed:
                self.subscribe()

    def _cancel_recheck(self) -> None:
        if self._recheck_timer is not None:
            self.node.destroy_timer(self._recheck_timer)
            self._recheck_timer = None

    def close(self) -> None:
        """Unsubscribe for good (call under the node's lock)."""
        self._closed = True
        self._cancel_recheck()
        if self._sub is not None:
            self.node.destroy_subscription(self._sub)
            self._sub = None
        self.reliability = ""
