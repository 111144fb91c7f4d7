"""The node's /diagnostics: its state in one level with the reason (not just a level), and the
DiagnosticArray that carries it with the counters (rclpy wiring of `saom_ros.node`).

`diagnosis` decides from a `NodeHealth` snapshot only, so every branch is testable without a node.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
FAILURES_FOR_ERROR = 3  # consecutive model failures that make the diagnostics ERROR


@dataclass(frozen=True)
class NodeHealth:
    """What the diagnosis reads of the node at one moment (ages in seconds: now - then)."""

    transition: str = ""  # the transition in progress
    active: bool = False
    transition_error: str = ""  # why the last transition failed
    enabled: bool = True
    failures: int = 0  # consecutive failed frames
    last_error: str = ""
    topic: str = "the image topic"
    window: float = 5.0  # no frame / no result for this long is a WARN
    frame_age: float = 0.0  # since the last frame arrived
    processed_age: float = math.inf  # since the last frame was segmented
    skip_age: float = math.inf  # since the last frame was skipped
    last_skip: str = ""
    everything_mode: bool = True
    age_3d: float | None = None  # with depth: since the last frame with 3D objects
    problem_3d: str = ""  # why the last frames had none
    fps: float = 0.0


def diagnosis(h: NodeHealth) -> tuple[bytes, str]:
    """(level, message) for the node's state."""
    if h.transition:
        doing = " (loading the model)" if h.transition == "activate" else ""
        return WARN, f"{h.transition} in progress{doing}"
    if not h.active:
        if h.transition_error:
            return ERROR, h.transition_error
        return OK, "inactive: not segmenting (lifecycle state inactive, model not loaded)"
    if not h.enabled:
        return OK, "paused: enable is false (model loaded, frames ignored)"
    if h.failures >= FAILURES_FOR_ERROR:
        return ERROR, f"inference keeps failing: the last {h.failures} frames failed ({h.last_error})"
    if h.frame_age > h.window:
        return WARN, f"no frame on {h.topic} for {h.frame_age:.0f} s"
    if h.processed_age <= h.window:
        if h.failures:
            return WARN, f"{h.failures} frame(s) failed: {h.last_error}"
        if h.age_3d is not None and h.age_3d > h.window:
            return WARN, (f"segmenting in 2D only, {h.fps:.1f} frames/s: no 3D for {h.window:.0f} s "
                          f"({h.problem_3d or 'no depth yet'})")
        return OK, f"segmenting, {h.fps:.1f} frames/s"
    if h.skip_age <= h.window:
        return WARN, f"every recent frame was skipped: {h.last_skip}"
    if not h.everything_mode:
        return OK, "frames arrive; waiting for prompts (everything_mode is off)"
    if h.failures:
        return WARN, f"{h.failures} frame(s) failed: {h.last_error}"
    return WARN, f"frames arrive but none was segmented for {h.window:.0f} s (model still busy)"


def diagnostic_array(stamp: object, name: str, hardware_id: str, level: bytes, message: str,
                     values: Iterable[tuple[str, str]]) -> DiagnosticArray:
    """One DiagnosticStatus with its key/values, stamped."""
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, level=level, message=message,
                              values=[KeyValue(key=k, value=v) for k, v in values])
    msg = DiagnosticArray(status=[status])
    msg.header.stamp = stamp
    return msg
