"""saom_ros.worker without ROS: latest-frame slot, worker, prompt matching, rate limiting, statistics."""
from __future__ import annotations

import threading
import time

import pytest

from saom_ros.worker import FrameWorker, Job, LatestSlot, PromptMatcher, RateLimiter, Stats


def test_latest_slot_keeps_only_the_newest():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.take() is None and len(slot) == 0
    assert slot.put(1) is False
    assert slot.put(2) is True and slot.put(3) is True
    assert len(slot) == 1 and slot.dropped == 2
    assert slot.take() == 3 and slot.take() is None
    slot.put(4)
    assert slot.clear() == 1 and slot.dropped == 3 and slot.clear() == 0


def _job(i, kind="frame"):
    return Job(kind, i, time.monotonic())


def test_worker_drops_stale_frames_under_a_fast_producer():
    seen: list[int] = []
    started = threading.Event()

    def process(job):
        started.set()
        time.sleep(0.05)
        seen.append(job.image)

    worker = FrameWorker(process, lambda j, e: None)
    worker.start()
    try:
        dropped = 0
        for i in range(40):  # 400 frames/s against a 20 frames/s model
            dropped += worker.submit_frame(_job(i))
            time.sleep(0.0025)
        assert started.wait(2)
        deadline = time.monotonic() + 3
        while (worker.busy or len(worker.frames)) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        assert worker.stop(2)
    assert seen[-1] == 39, "the newest frame is always processed"
    assert seen == sorted(seen) and len(seen) < 10
    assert dropped == worker.frames.dropped == 40 - len(seen)
    assert worker.max_pending <= 2


def test_worker_survives_exceptions_and_runs_prompts_first():
    errors: list[str] = []
    order: list[str] = []
    gate = threading.Event()

    def process(job):
        if job.image == "boom":
            raise ValueError("bad frame")
        if job.image == "block":
            gate.wait(2)
        order.append(f"{job.kind}:{job.image}")

    worker = FrameWorker(process, lambda j, e: errors.append(str(e)))
    worker.start()
    try:
        worker.submit_frame(_job("boom"))
        time.sleep(0.1)
        worker.submit_frame(_job("block"))
        time.sleep(0.1)
        worker.submit_frame(_job("f1"))
        worker.submit_prompts(_job("p1", "prompts"))
        gate.set()
        deadline = time.monotonic() + 3
        while len(order) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop(2)
    assert errors == ["bad frame"]
    assert order == ["frame:block", "prompts:p1", "frame:f1"]
    assert not worker.running


def test_worker_stop_drops_pending_and_restart_is_refused():
    worker = FrameWorker(lambda j: time.sleep(0.2), lambda j, e: None)
    worker.start()
    with pytest.raises(RuntimeError):
        worker.start()
    worker.submit_frame(_job(1))
    time.sleep(0.05)
    worker.submit_frame(_job(2))
    assert worker.stop(5)
    assert len(worker.frames) == 0 and worker.frames.dropped == 1


def test_prompt_matcher():
    m = PromptMatcher(capacity=3)
    assert m.add_prompts((0, 0), "p", 0.0) is None and m.unmatched == 1  # no frame yet
    for s in range(1, 5):
        assert m.add_frame((s, 0), f"f{s}") is None
    assert m.add_prompts((3, 0), "p3", 0.0) == "f3"
    assert m.add_prompts((0, 0), "pz", 0.0) == "f4"  # zero stamp: newest frame
    assert m.add_prompts((1, 0), "p1", 0.0) is None and m.unmatched == 2  # left the buffer
    assert m.add_prompts((6, 0), "p6", 1.5) is None  # waits for its frame
    assert m.add_frame((5, 0), "f5") is None
    assert m.add_frame((6, 0), "f6") == ("f6", "p6", 1.5)
    assert m.add_prompts((8, 0), "p8", 0.0) is None
    assert m.add_prompts((9, 0), "p9", 0.0) is None and m.unmatched == 3  # replaced the waiting one
    assert m.add_frame((10, 0), "f10") is None and m.unmatched == 4  # frame 9 never came
    m.clear()
    assert m.add_prompts((0, 0), "p", 0.0) is None


def test_rate_limiter():
    now = [0.0]
    limiter = RateLimiter(5.0, clock=lambda: now[0])
    assert limiter.ready() and not limiter.ready()
    now[0] = 4.9
    assert not limiter.ready()
    now[0] = 5.0
    assert limiter.ready()
    assert not RateLimiter(0.0).ready()


def test_stats_snapshot():
    now = [100.0]
    stats = Stats(window=4, clock=lambda: now[0])
    first = stats.snapshot()
    assert first.fps == 0.0 and first.latency_p50_ms == 0.0
    for lat in (0.010, 0.020, 0.030, 0.040, 0.050):
        stats.count("received")
        stats.done(lat, lat / 2)
    stats.count("dropped", 3)
    stats.count("skipped")
    stats.error("bad frame: x" * 100)
    stats.done(0.1, 0.1, prompts=True)
    now[0] = 102.0
    snap = stats.snapshot()
    assert snap.fps == pytest.approx(2.5)  # 5 frames in 2 s
    assert (snap.processed, snap.dropped, snap.failed, snap.skipped, snap.prompts_processed) == (5, 3, 1, 1, 1)
    assert snap.latency_p50_ms == pytest.approx(45.0)  # window of 4: 30, 40, 50, 100 ms
    assert snap.latency_max_ms == pytest.approx(100.0)
    assert len(snap.last_error) == 200
    keys = dict(snap.key_values())
    assert keys["frames dropped"] == "3" and keys["latency max ms"] == "100.00"
    assert "frames/s" in snap.line() and "dropped 3" in snap.line()


def test_slot_with_capacity_drops_the_oldest():
    slot: LatestSlot[int] = LatestSlot(3)
    assert [slot.put(i) for i in range(5)] == [False, False, False, True, True]
    assert slot.dropped == 2 and len(slot) == 3
    assert [slot.take(), slot.take()] == [2, 3]
    assert slot.clear() == 1 and slot.dropped == 3
    with pytest.raises(ValueError):
        LatestSlot(0)


def test_prompt_matcher_says_why_a_set_never_met_its_frame():
    m = PromptMatcher(capacity=2)
    assert m.add_prompts((0, 0), "p", 0.0) is None and m.unmatched == 1 and "no frame received yet" in m.last_unmatched
    for k in range(3):
        m.add_frame((10 + k, 0), f"f{k}")
    assert m.add_prompts((10, 0), "old", 0.0) is None and m.unmatched == 2
    assert "prompt_frame_buffer" in m.last_unmatched and "10.000000000" in m.last_unmatched
    assert m.add_prompts((20, 0), "a", 0.0) is None and m.unmatched == 2  # waits for its frame
    assert m.add_prompts((21, 0), "b", 0.0) is None and m.unmatched == 3 and "replaced" in m.last_unmatched
    assert m.add_frame((22, 0), "f22") is None and m.unmatched == 4 and "skipped or lost" in m.last_unmatched
    assert m.add_prompts((23, 0), "c", 0.0) is None
    m.clear()
    assert m.unmatched == 5 and "stopped" in m.last_unmatched
