"""Colour frames paired with depth and camera_info by stamp, behind one small interface (the node).

`make_pairing(slop, max_wait)` returns message_filters' ApproximateTimeSynchronizer where it is
importable (a ROS 2 install) and saom_ros.sync.StampSync otherwise (the PyPI wheels have no
message_filters). Either way every colour frame given to `add` comes out exactly once, as a
`sync.Match`: with the depth and camera_info nearest to its stamp within `slop` seconds, or
without them (`match.depth is None`) once they cannot come any more or the frame is older than
`max_wait` (`expire(now_ns)`, called periodically, `now_ns` on the clock of the stamps). So a
colour frame without depth is still segmented in 2D, and the node counts it.

message_filters' synchroniser emits complete triples only; the colour frames it never pairs are
kept here by stamp and given out without depth when a later frame is paired (the synchroniser has
passed them) or when they expire. Both are thread-safe (subscriptions and the expiry timer may run
in different threads of a MultiThreadedExecutor).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Protocol

from .sync import CAMERA_INFO, COLOR, DEPTH, Match, StampSync, stamp_ns

STREAMS = (COLOR, DEPTH, CAMERA_INFO)


class Pairing(Protocol):
    name: str

    def add(self, stream: str, msg: Any) -> list[Match]:
        """Take a message of COLOR, DEPTH or CAMERA_INFO; the colour frames now decided, oldest first."""

    def expire(self, now_ns: int) -> list[Match]:
        """Colour frames that waited longer than max_wait, without depth."""


class StampSyncPairing:
    """saom_ros.sync.StampSync, keyed by the messages' header stamps."""

    name = "saom_ros.sync"

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
    """message_filters' synchroniser where importable, else saom_ros.sync.StampSync."""
    try:
        import message_filters  # noqa: F401
    except ImportError:
        return StampSyncPairing(slop, max_wait)
    return MessageFiltersPairing(slop, max_wait)
