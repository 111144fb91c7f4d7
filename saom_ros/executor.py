"""The executor `saom_node` spins (and its tests spin): rclpy's MultiThreadedExecutor that hands a
callback still waiting in its thread pool out again only after a pause.

rclpy's MultiThreadedExecutor (9.1.2, Kilted) yields a callback again while it still waits in the
thread pool for a thread to start it (ros2/rclpy#1452, fixed upstream by ros2/rclpy#1547). Under a
30 Hz camera the spin thread then re-submits that callback in a loop, holding the GIL, the pool's
queue fills with copies and the worker thread that segments frames starves: a 0.1 s model call took
1-5 s in test_ros_node's burst test. Here the spin thread meets such a callback and sleeps, so that a
pool thread takes the GIL and starts it; a callback still pending after REHAND_AFTER_S (a coroutine
that awaits something, which rclpy resumes by handing it out again) is handed out once more.
"""
from __future__ import annotations

import time
import weakref
from typing import Any

from rclpy.executors import MultiThreadedExecutor

SLEEP_S = 0.001  # how long the spin thread gives up the GIL when it meets a callback it handed out
REHAND_AFTER_S = 0.01  # a callback still pending this long after its hand-out is handed out again


class NodeExecutor(MultiThreadedExecutor):
    def __init__(self, num_threads: int = 4, *, context: Any = None) -> None:
        super().__init__(num_threads=num_threads, context=context)
        self._handed_out: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # task -> when

    def wait_for_ready_callbacks(self, *args: Any, **kwargs: Any) -> Any:
        while True:
            handler, entity, node = super().wait_for_ready_callbacks(*args, **kwargs)
            now = time.monotonic()
            if now - self._handed_out.get(handler, -REHAND_AFTER_S) >= REHAND_AFTER_S:
                self._handed_out[handler] = now
                return handler, entity, node
            time.sleep(SLEEP_S)
