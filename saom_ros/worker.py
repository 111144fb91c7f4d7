"""Latest-frame inference without ROS: a one-item slot per input, a worker thread, prompt matching, statistics.

The subscription callback only stores the newest message (`FrameWorker.submit_frame`); the worker
runs the model on whatever is newest when it is free, so under a publisher faster than the model
frames are dropped (counted), never queued. Prompt jobs have their own slot and go first.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Holds the newest `capacity` items: `put` on a full slot drops the oldest unconsumed item (counted)."""

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._items: deque[T] = deque()
        self.capacity = capacity
        self.dropped = 0
        self.lock = threading.Lock()

    def put(self, item: T) -> bool:
        """Store item; True when an older item that was never taken was dropped for it."""
        with self.lock:
            replaced = len(self._items) >= self.capacity
            if replaced:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            return replaced

    def take(self) -> T | None:
        """The oldest item held (None when empty)."""
        with self.lock:
            return self._items.popleft() if self._items else None

    def clear(self) -> int:
        """Drop whatever is held; returns how many items were dropped."""
        with self.lock:
            had = len(self._items)
            self.dropped += had
            self._items.clear()
            return had

    def __len__(self) -> int:
        with self.lock:
            return len(self._items)


@dataclass
class Job:
    kind: str  # "frame" (everything mode) or "prompts"
    image: Any  # the input image message
    received: float  # time.monotonic() when the image (or the prompts) arrived
    prompts: Any = None  # the Detection2DArray for kind == "prompts"


class FrameWorker:
    """One thread that runs `process(job)` on the newest job; exceptions go to `on_error` and the loop goes on."""

    def __init__(self, process: Callable[[Job], None], on_error: Callable[[Job, BaseException], None],
                 name: str = "saom-worker", prompt_capacity: int = 1) -> None:
        self._process = process
        self._on_error = on_error
        self.frames: LatestSlot[Job] = LatestSlot()
        self.prompts: LatestSlot[Job] = LatestSlot(prompt_capacity)  # prompt sets are requests: a few wait
        self._wake = threading.Condition()
        self._stop = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self._name = name
        self.max_pending = 0  # the most jobs ever waiting at once (1 + prompt_capacity at most)

    def start(self) -> None:
        if self.running:
            raise RuntimeError("worker already started")
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop after the job in progress (pending jobs are dropped); True when the thread ended in time."""
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self.frames.clear()
        self.prompts.clear()
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread to end (after `stop`); True when it has."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        return self._busy

    def submit_frame(self, job: Job) -> bool:
        """Returns True when an older, unprocessed frame was dropped for this one."""
        return self._submit(self.frames, job)

    def submit_prompts(self, job: Job) -> bool:
        """Returns True when the oldest waiting prompt set was dropped for this one (the queue was full)."""
        return self._submit(self.prompts, job)

    def _submit(self, slot: LatestSlot[Job], job: Job) -> bool:
        replaced = slot.put(job)
        pending = len(self.frames) + len(self.prompts)
        self.max_pending = max(self.max_pending, pending)
        with self._wake:
            self._wake.notify()
        return replaced

    def _next(self) -> Job | None:
        with self._wake:
            while not self._stop:
                job = self.prompts.take() or self.frames.take()
                if job is not None:
                    self._busy = True
                    return job
                self._wake.wait(0.5)
        return None

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                self._process(job)
            except BaseException as exc:  # noqa: BLE001 - a bad frame must not end the worker
                try:
                    self._on_error(job, exc)
                except Exception:  # noqa: BLE001
                    pass
            finally:
                self._busy = False


class PromptMatcher:
    """Pairs prompt messages with the image of the same stamp.

    Keeps the last `capacity` frames (bounded memory). A prompt with a zero stamp goes with the
    newest frame (click tools). A prompt whose frame has not arrived yet waits (only the newest
    such prompt) until that frame comes; frames are taken to arrive in stamp order, so a prompt
    older than the newest frame and not in the buffer never matches. Every prompt set that never
    meets its frame is counted in `unmatched`, with the reason of the latest in `last_unmatched`.
    """

    def __init__(self, capacity: int = 10) -> None:
        self._frames: deque[tuple[tuple[int, int], Any]] = deque(maxlen=max(1, capacity))
        self._pending: tuple[tuple[int, int], Any, float] | None = None
        self._lock = threading.Lock()
        self.unmatched = 0  # prompt sets dropped without a frame
        self.last_unmatched = ""

    def _drop(self, key: tuple[int, int], reason: str) -> None:
        self.unmatched += 1
        self.last_unmatched = f"prompt set of stamp {key[0]}.{key[1]:09d} dropped: {reason}"

    def add_frame(self, key: tuple[int, int], frame: Any) -> tuple[Any, Any, float] | None:
        """Remember a frame; returns (frame, prompts, prompts_received) when a waiting prompt was for it."""
        with self._lock:
            self._frames.append((key, frame))
            if self._pending is None:
                return None
            pkey, prompts, received = self._pending
            if pkey == key:
                self._pending = None
                return frame, prompts, received
            if pkey < key:
                self._pending = None
                self._drop(pkey, f"a newer frame ({key[0]}.{key[1]:09d}) came first: its frame was skipped or lost")
            return None

    def add_prompts(self, key: tuple[int, int], prompts: Any, received: float) -> Any | None:
        """Returns the frame for these prompts, or None when they wait for (or will never see) it."""
        with self._lock:
            if key == (0, 0):
                if not self._frames:
                    self._drop(key, "no frame received yet")
                    return None
                return self._frames[-1][1]
            for fkey, frame in reversed(self._frames):
                if fkey == key:
                    return frame
            if self._frames and key < self._frames[-1][0]:
                self._drop(key, "older than every frame kept (prompt_frame_buffer)")
                return None
            if self._pending is not None:
                self._drop(self._pending[0], "replaced by a newer prompt set before its frame arrived")
            self._pending = (key, prompts, received)
            return None

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            if self._pending is not None:
                self._drop(self._pending[0], "the node stopped before its frame arrived")
            self._pending = None


class RateLimiter:
    """`ready()` is True at most once per `period` seconds (period <= 0: never)."""

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self._clock = clock
        self._last: float | None = None

    def ready(self) -> bool:
        if self.period <= 0:
            return False
        now = self._clock()
        if self._last is None or now - self._last >= self.period:
            self._last = now
            return True
        return False


@dataclass
class StatsSnapshot:
    received: int
    processed: int
    dropped: int
    failed: int
    skipped: int
    prompts_processed: int
    prompts_dropped: int
    prompts_unmatched: int
    consecutive_failures: int
    fps: float  # frames processed per second since the previous snapshot
    latency_p50_ms: float
    latency_p95_ms: float
    latency_max_ms: float
    inference_p50_ms: float
    inference_p95_ms: float
    last_error: str

    def line(self) -> str:
        return (f"{self.fps:.1f} frames/s, latency p50 {self.latency_p50_ms:.1f} ms p95 {self.latency_p95_ms:.1f} ms "
                f"(model p50 {self.inference_p50_ms:.1f} ms); processed {self.processed}, dropped {self.dropped}, "
                f"failed {self.failed}, skipped {self.skipped}, prompt sets {self.prompts_processed} "
                f"(dropped {self.prompts_dropped}, unmatched {self.prompts_unmatched})")

    def key_values(self) -> list[tuple[str, str]]:
        return [
            ("frames received", str(self.received)),
            ("frames processed", str(self.processed)),
            ("frames dropped", str(self.dropped)),
            ("frames failed", str(self.failed)),
            ("frames skipped (encoding)", str(self.skipped)),
            ("prompt sets processed", str(self.prompts_processed)),
            ("prompt sets dropped (queue full)", str(self.prompts_dropped)),
            ("prompt sets unmatched (no frame)", str(self.prompts_unmatched)),
            ("consecutive failures", str(self.consecutive_failures)),
            ("frames/s", f"{self.fps:.2f}"),
            ("latency p50 ms", f"{self.latency_p50_ms:.2f}"),
            ("latency p95 ms", f"{self.latency_p95_ms:.2f}"),
            ("latency max ms", f"{self.latency_max_ms:.2f}"),
            ("inference p50 ms", f"{self.inference_p50_ms:.2f}"),
            ("inference p95 ms", f"{self.inference_p95_ms:.2f}"),
            ("last error", self.last_error),
        ]


@dataclass
class Stats:
    """Thread-safe counters and a window of recent latencies (bounded)."""

    window: int = 200
    clock: Callable[[], float] = time.monotonic
    received: int = 0
    processed: int = 0
    dropped: int = 0
    failed: int = 0
    skipped: int = 0
    prompts_processed: int = 0
    prompts_dropped: int = 0
    prompts_unmatched: int = 0
    consecutive_failures: int = 0  # failed frames since the last processed one
    last_error: str = ""
    _latency: deque = field(default_factory=deque)
    _inference: deque = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_time: float | None = None
    _last_processed: int = 0

    def __post_init__(self) -> None:
        self._latency = deque(maxlen=self.window)
        self._inference = deque(maxlen=self.window)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def error(self, message: str) -> None:
        with self._lock:
            self.failed += 1
            self.consecutive_failures += 1
            self.last_error = message[:200]

    def done(self, latency_s: float, inference_s: float, prompts: bool = False) -> None:
        with self._lock:
            self.consecutive_failures = 0
            if prompts:
                self.prompts_processed += 1
            else:
                self.processed += 1
            self._latency.append(latency_s)
            self._inference.append(inference_s)

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            now = self.clock()
            fps = 0.0
            if self._last_time is not None and now > self._last_time:
                fps = (self.processed - self._last_processed) / (now - self._last_time)
            self._last_time, self._last_processed = now, self.processed
            lat = np.asarray(self._latency, dtype=np.float64) * 1e3
            inf = np.asarray(self._inference, dtype=np.float64) * 1e3

            def pct(a: np.ndarray, q: float) -> float:
                return float(np.percentile(a, q)) if a.size else 0.0

            return StatsSnapshot(
                received=self.received, processed=self.processed, dropped=self.dropped, failed=self.failed,
                skipped=self.skipped, prompts_processed=self.prompts_processed,
                prompts_dropped=self.prompts_dropped, prompts_unmatched=self.prompts_unmatched,
                consecutive_failures=self.consecutive_failures, fps=fps,
                latency_p50_ms=pct(lat, 50), latency_p95_ms=pct(lat, 95), latency_max_ms=pct(lat, 100),
                inference_p50_ms=pct(inf, 50), inference_p95_ms=pct(inf, 95), last_error=self.last_error,
            )
