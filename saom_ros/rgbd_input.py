"""saom_node's depth input (rclpy wiring): the depth/image_raw and camera_info subscriptions, their
pairing with the colour frames by stamp (saom_ros.pairing), and the timer that gives out a colour
frame whose depth does not come within depth_wait (it is then segmented in 2D and counted).

Reliability follows image_reliability; auto takes the publishers' (best effort while there is
none, re-checked by the node's diagnostics timer through `resubscribe_unsettled`). Pairing and
hand-off run under the node's lock, so an expiry and a subscription never hand frames to the
worker in the other's order.
"""
from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

try:  # Jazzy and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

from . import qos
from .pairing import CAMERA_INFO, COLOR, DEPTH, Match, make_pairing, stamp_ns
from .params import NodeParams

DEPTH_TOPIC, CAMERA_INFO_TOPIC = "depth/image_raw", "camera_info"  # the launch file remaps them
RGBD_INPUTS = {DEPTH: (Image, DEPTH_TOPIC), CAMERA_INFO: (CameraInfo, CAMERA_INFO_TOPIC)}
ARRIVALS_KEPT = 100  # colour arrival times remembered (frames the pairing gave out long ago go)


@dataclass
class RgbdSubscription:
    subscription: Any
    reliability: str  # best_effort or reliable
    settled: bool  # False: chosen by auto before any publisher appeared (re-checked)


class RgbdInput:
    """The depth input of one activation of the node (see the module docstring)."""

    def __init__(self, node: Node, params: NodeParams, hand_over: Callable[[Match, float], None],
                 lock: threading.RLock, timer_group: Any, accepting: Callable[[], bool]) -> None:
        """`hand_over(match, received)` takes a decided colour frame (with depth, or without);
        `accepting()` says whether messages are wanted now (a worker runs, enable is true)."""
        self.node, self.params = node, params
        self._hand_over, self._lock, self._accepting = hand_over, lock, accepting
        self.pairing = make_pairing(params.sync_slop, params.depth_wait)
        self.subs: dict[str, RgbdSubscription] = {}
        self._arrivals: OrderedDict[int, float] = OrderedDict()  # colour stamp ns -> monotonic arrival
        self._arrivals_lock = threading.Lock()  # subscriptions and the expiry timer run in different threads
        for stream in RGBD_INPUTS:
            self._subscribe(stream)
        self._timer = node.create_timer(min(0.05, params.depth_wait / 2), self._expire, callback_group=timer_group)
        node.get_logger().info(f"depth: {node.resolve_topic_name(DEPTH_TOPIC)} and "
                               f"{node.resolve_topic_name(CAMERA_INFO_TOPIC)} paired with colour by stamp "
                               f"(slop {params.sync_slop} s, {self.pairing.name})")

    def add_color(self, msg: Any, received: float) -> None:
        """A colour frame, received at `received` (time.monotonic())."""
        with self._arrivals_lock:
            self._arrivals[stamp_ns(msg.header)] = received
            while len(self._arrivals) > ARRIVALS_KEPT:
                self._arrivals.popitem(last=False)
        self._pair(COLOR, msg)

    def resubscribe_unsettled(self) -> None:
        """Subscriptions auto chose before their publisher appeared: subscribed again as it publishes."""
        for stream, sub in list(self.subs.items()):
            if not sub.settled:
                self._subscribe(stream)

    def close(self) -> None:
        node = self.node
        for sub in self.subs.values():
            node.destroy_subscription(sub.subscription)
        self.subs = {}
        node.destroy_timer(self._timer)

    def _subscribe(self, stream: str) -> None:
        node, (msg_type, topic) = self.node, RGBD_INPUTS[stream]
        reliability, settled = self.params.image_reliability, True
        if reliability == "auto":
            found = qos.publishers_reliability(node.get_publishers_info_by_topic(node.resolve_topic_name(topic)))
            reliability, settled = found or "best_effort", found is not None
        current = self.subs.get(stream)
        if current is not None and current.reliability == reliability:
            current.settled = settled
            return
        if current is not None:
            node.destroy_subscription(current.subscription)
            node.get_logger().info(f"image_reliability auto: {topic} is published {reliability}; "
                                   f"subscribing {reliability}")
        # no QoS event handlers: re-subscribing while the executor waits on a handler being destroyed
        # raises InvalidHandle inside rclpy's executor (Kilted)
        sub = node.create_subscription(msg_type, topic, functools.partial(self._on_message, stream),
                                       qos.image_qos(reliability, qos.DEPTH_QUEUE),
                                       event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))
        self.subs[stream] = RgbdSubscription(sub, reliability, settled)

    def _on_message(self, stream: str, msg: Any) -> None:
        if self._accepting():
            self._pair(stream, msg)

    def _pair(self, stream: str, msg: Any = None, now_ns: int = 0) -> None:
        """Give `msg` of `stream` to the pairing (None: expire what waited past `now_ns`) and hand the
        frames it decides over, in their order, under the node's lock."""
        with self._lock:
            matches = self.pairing.expire(now_ns) if msg is None else self.pairing.add(stream, msg)
            for match in matches:
                with self._arrivals_lock:
                    received = self._arrivals.pop(match.stamp_ns, time.monotonic())
                self._hand_over(match, received)

    def _expire(self) -> None:
        """Give out colour frames that waited depth_wait for their depth. Timed on the stamps' clock
        as seen from here (the newest colour stamp plus the time since it arrived), so camera clocks
        and sim time both work."""
        with self._arrivals_lock:
            if not self._arrivals:
                return
            stamp, arrived = next(reversed(self._arrivals.items()))
        self._pair(COLOR, now_ns=stamp + int((time.monotonic() - arrived) * 1e9))
