"""Pairing colour frames with depth and camera_info by stamp (ROS-free; the node's fallback where
message_filters is not installed, and what `saom bag` uses on a recording).

Every colour frame comes out exactly once, in stamp order: with the depth and camera_info messages
whose stamps are nearest to its own within `slop` seconds, or without them (`depth is None`) once
no such message can arrive any more: a later message of that stream is already past the window
(stamps grow per stream), or `expire(now)` finds the frame older than `max_wait`. So a colour
frame without matching depth is still segmented in 2D, and the caller can count it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

COLOR, DEPTH, CAMERA_INFO = "color", "depth", "camera_info"
_OTHERS = (DEPTH, CAMERA_INFO)


@dataclass
class Match:
    stamp_ns: int
    color: Any
    depth: Any | None = None
    camera_info: Any | None = None  # set only together with depth

    @property
    def complete(self) -> bool:
        return self.depth is not None


def stamp_ns(header: Any) -> int:
    """A std_msgs/Header's stamp in nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class StampSync:
    """Approximate-time pairing of colour with depth and camera_info (see the module docstring)."""

    def __init__(self, slop: float, max_wait: float = 0.5, queue_size: int = 30) -> None:
        if not slop >= 0 or not max_wait > 0 or queue_size < 1:
            raise ValueError(
                f"sync needs slop >= 0, max_wait > 0, queue_size >= 1 (got {slop}, {max_wait}, {queue_size})"
            )
        self.slop_ns = int(round(slop * 1e9))
        self.max_wait_ns = int(round(max_wait * 1e9))
        self.queues: dict[str, deque[tuple[int, Any]]] = {s: deque(maxlen=queue_size) for s in (COLOR, *_OTHERS)}

    def add(self, stream: str, stamp: int, msg: Any) -> list[Match]:
        """Queue a message (stamp in ns); returns the colour frames now decided, oldest first."""
        if stream not in self.queues:
            raise ValueError(f"unknown stream '{stream}' (expected {COLOR}, {DEPTH} or {CAMERA_INFO})")
        queue = self.queues[stream]
        if stream == COLOR and len(queue) == queue.maxlen:  # the oldest frame would be lost: decide it now
            out = [Match(*queue.popleft())]
        else:
            out = []
        queue.append((int(stamp), msg))
        return out + self._decide()

    def expire(self, now_ns: int) -> list[Match]:
        """Colour frames older than max_wait, without depth (depth stopped, or was never published)."""
        out = []
        colors = self.queues[COLOR]
        while colors and now_ns - colors[0][0] > self.max_wait_ns:
            out.append(Match(*colors.popleft()))
        return out

    def _nearest(self, stream: str, stamp: int) -> tuple[Any | None, bool]:
        """(message within slop nearest to `stamp` or None, whether one may still come)."""
        best, best_gap, may_come = None, None, True
        for other_stamp, msg in self.queues[stream]:
            gap = abs(other_stamp - stamp)
            if gap <= self.slop_ns and (best_gap is None or gap < best_gap):
                best, best_gap = msg, gap
            if other_stamp > stamp + self.slop_ns:
                may_come = False
        return best, may_come

    def _decide(self) -> list[Match]:
        out = []
        colors = self.queues[COLOR]
        while colors:
            stamp, color = colors[0]
            depth, depth_may_come = self._nearest(DEPTH, stamp)
            info, info_may_come = self._nearest(CAMERA_INFO, stamp)
            if depth is not None and info is not None:
                out.append(Match(stamp, color, depth, info))
            elif (depth is None and not depth_may_come) or (info is None and not info_may_come):
                out.append(Match(stamp, color))
            else:
                break  # wait for this frame's depth; later frames wait behind it (stamp order)
            colors.popleft()
        self._prune()
        return out

    def _prune(self) -> None:
        """Drop depth/camera_info too old for any queued colour frame (keep the newest of each)."""
        colors = self.queues[COLOR]
        oldest = colors[0][0] if colors else None
        for stream in _OTHERS:
            queue = self.queues[stream]
            while len(queue) > 1 and (oldest is None or queue[0][0] < oldest - self.slop_ns):
                queue.popleft()
