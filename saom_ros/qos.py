"""The node's QoS: the profiles of its inputs and outputs, the reliability rule of image_reliability
auto, and which `qos_overrides` parameters apply (rclpy wiring of `saom_ros.node`).

Outputs are lossless by default (reliable, a few messages deep so a slow reader does not lose any);
every publisher takes rclpy's qos_overrides of history, depth and reliability
(`qos_overrides./<node>/overlay.publisher.reliability: best_effort` for a Wi-Fi link). The image and
prompts subscriptions take them too (an override of the image reliability wins over
image_reliability, auto included); qos_overrides for any other topic are refused, since rclpy would
ignore them silently.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy

from saom_core.errors import ConfigError

OVERRIDABLE_POLICIES = (QoSPolicyKind.HISTORY, QoSPolicyKind.DEPTH, QoSPolicyKind.RELIABILITY)
# Prompts are requests: received reliably (a best-effort prompt publisher does not match: its
# prompts would be lost silently) with a small bounded queue.
PROMPTS_DEPTH = 5
DEPTH_QUEUE = 5  # depth and camera_info wait this deep for their colour frame


def output_qos(latched: bool = False) -> QoSProfile:
    """A fresh profile (qos_overrides change the profile they are applied to): reliable, keep last 10;
    `latched`: keep last 1, transient local (~/label_info)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1 if latched else 10,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def image_qos(reliability: str, depth: int = 1) -> QoSProfile:
    """Sensor-data QoS (keep last `depth`, 1 for images) with the given reliability (best_effort or reliable)."""
    rel = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=rel,
                      durability=DurabilityPolicy.VOLATILE)


def prompts_qos() -> QoSProfile:
    """A fresh profile (qos_overrides change the profile they are applied to)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=PROMPTS_DEPTH, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def publishers_reliability(infos: Sequence[Any]) -> str | None:
    """What a subscription should ask to hear these publishers best (rosbag2's QoS adaptation):
    reliable when every publisher is reliable, best_effort otherwise, None when there is none."""
    if not infos:
        return None
    reliable = all(info.qos_profile.reliability == ReliabilityPolicy.RELIABLE for info in infos)
    return "reliable" if reliable else "best_effort"


def override_names(topic: str, entity: str) -> list[str]:
    """The qos_overrides parameters of one entity ("publisher" or "subscription") on a resolved topic."""
    return [f"qos_overrides.{topic}.{entity}.{kind.name.lower()}" for kind in OVERRIDABLE_POLICIES]


def check_overrides(given: Iterable[str], subscriptions: Iterable[str], publishers: Iterable[str]) -> None:
    """ConfigError for qos_overrides parameters that apply to none of these resolved topics."""
    allowed = [n for t in subscriptions for n in override_names(t, "subscription")]
    allowed += [n for t in publishers for n in override_names(t, "publisher")]
    unknown = sorted(set(n for n in given if n.startswith("qos_overrides.")) - set(allowed))
    if unknown:
        raise ConfigError(f"qos_overrides {', '.join(unknown)} do not apply to this node; these do: "
                          f"{', '.join(allowed)}")
