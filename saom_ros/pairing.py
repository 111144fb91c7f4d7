"""Colour frames paired with depth and camera_info by stamp (ROS-free): the node's depth input and
`saom bag`.

Every colour frame comes out exactly once, in stamp order, as a `Match`: with the depth and
camera_info messages whose stamps are nearest to its own within `slop` seconds, or without them
(`match.depth is None`) once no such message can arrive any more: a later message of that stream
is already past the window (stamps grow per stream), or `expire(now_ns)` (called periodically,
`now_ns` on the clock of the stamps) finds the frame older than `max_wait`. So a colour frame
without matching depth is still segmented in 2D, and the caller can count it.

`StampSync` does it on stamps (what `saom bag` uses on a recording). `make_pairing(slop, max_wait)`
returns message_filters' ApproximateTimeSynchronizer where it is importable (a ROS 2 install) and
StampSync otherwise (the PyPI wheels have no message_filters), behind one small interface
(`Pairing`, keyed by the messages' header stamps). message_filters' synchroniser emits complete
triples only; the colour frames it never pairs are kept here by stamp and given out without depth
when a later frame is paired (the synchroniser has passed them) or when they expire. Both are
thread-safe (subscriptions and the expiry timer may run in different threads of a
MultiThreadedExecutor).
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Protocol

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


STREAMS = (COLOR, DEPTH, CAMERA_INFO)


class Pairing(Protocol):
    name: str

    def add(self, stream: str, msg: Any) -> list[Match]:
        """Take a message of COLOR, DEPTH or CAMERA_INFO; the colour frames now decided, oldest first."""

    def expire(self, now_ns: int) -> list[Match]:
        """Colour frames that waited longer than max_wait, without depth."""


class StampSyncPairing:
    """StampSync, keyed by the messages' header stamps."""

    name = "saom_ros.pairing"

    def __init__(self, slop: float, max_wait: float, queue_size: int = 30) -> None:
        self._sync = StampSync(slop, max_wait=max_wait, queue_size=queue_size)
        self._lock = threading.Lock()

    def add(self, stream: str, msg: Any) -> list[Match]:
        with self._lock:
            return self._sync.add(stream, stamp_ns(msg.header), msg)

    def expire(self, now_ns: int) -> list[Match]:
        with self._lock:
            return self._sync.expire(now_ns)


class MessageFiltersPairing:
    """message_filters.ApproximateTimeSynchronizer over three input filters, plus the colour frames it
    leaves unpaired (see the module docstring)."""

    name = "message_filters"

    def __init__(self, slop: float, max_wait: float, queue_size: int = 30) -> None:
        import message_filters

        if not slop >= 0 or not max_wait > 0 or queue_size < 1:
            raise ValueError(f"pairing needs slop >= 0, max_wait > 0, queue_size >= 1 "
                             f"(got {slop}, {max_wait}, {queue_size})")
        self._inputs = {s: message_filters.SimpleFilter() for s in STREAMS}
        self._sync = message_filters.ApproximateTimeSynchronizer([self._inputs[s] for s in STREAMS], queue_size, slop)
        self._sync.registerCallback(self._on_triple)
        self._pending: OrderedDict[int, Any] = OrderedDict()  # colour frames not yet decided, by stamp
        self._queue_size = queue_size
        self._max_wait_ns = int(round(max_wait * 1e9))
        self._out: list[Match] = []
        self._lock = threading.Lock()

    def _on_triple(self, color: Any, depth: Any, info: Any) -> None:
        stamp = stamp_ns(color.header)
        if stamp not in self._pending:  # already given out without depth (expired)
            return
        while self._pending:  # older frames were passed over by the synchroniser
            if next(iter(self._pending)) >= stamp:
                break
            self._out.append(Match(*self._pending.popitem(last=False)))
        del self._pending[stamp]
        self._out.append(Match(stamp, color, depth, info))

    def add(self, stream: str, msg: Any) -> list[Match]:
        if stream not in self._inputs:
            raise ValueError(f"unknown stream '{stream}' (expected {', '.join(STREAMS)})")
        with self._lock:
            if stream == COLOR:
                if len(self._pending) >= self._queue_size:
                    self._out.append(Match(*self._pending.popitem(last=False)))
                self._pending[stamp_ns(msg.header)] = msg
            self._inputs[stream].signalMessage(msg)
            out, self._out = self._out, []
            return out

    def expire(self, now_ns: int) -> list[Match]:
        with self._lock:
            out = []
            while self._pending and now_ns - next(iter(self._pending)) > self._max_wait_ns:
                out.append(Match(*self._pending.popitem(last=False)))
            return out


def make_pairing(slop: float, max_wait: float) -> Pairing:
    """message_filters' synchroniser where importable, else StampSync."""
    try:
        import message_filters  # noqa: F401
    except ImportError:
        return StampSyncPairing(slop, max_wait)
    return MessageFiltersPairing(slop, max_wait)
