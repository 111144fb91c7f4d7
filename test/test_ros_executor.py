"""saom_ros.executor.NodeExecutor: a callback handed out is not handed out again at once.

The parent's `wait_for_ready_callbacks` is replaced by a script that yields the same task over and
over, as rclpy 9.1.2's does while the task waits in the pool (ros2/rclpy#1452); a fake clock
advances by each sleep, so the test counts the spin thread's pauses exactly.
"""
from __future__ import annotations

import pytest

from saom_ros.testing import isolate_ros_env

DOMAIN_ID = isolate_ros_env()  # before rclpy.init

import rclpy  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402

from saom_ros import executor as executor_module  # noqa: E402
from saom_ros.executor import REHAND_AFTER_S, SLEEP_S, NodeExecutor  # noqa: E402


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


class Task:
    """Stands in for rclpy's Task: hashable and weak-referenceable."""


@pytest.fixture
def clock(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(executor_module, "time", fake)
    return fake


@pytest.fixture
def executor():
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID)
    ex = NodeExecutor(num_threads=2, context=ctx)
    yield ex
    ex.shutdown()
    rclpy.shutdown(context=ctx)


def scripted(monkeypatch, handlers):
    it = iter(handlers)
    monkeypatch.setattr(MultiThreadedExecutor, "wait_for_ready_callbacks",
                        lambda self, *a, **k: (next(it), None, None))


def test_a_pending_task_is_handed_out_again_only_after_the_pause(monkeypatch, clock, executor):
    pending, other = Task(), Task()
    scripted(monkeypatch, [pending] * 100 + [other])
    assert executor.wait_for_ready_callbacks()[0] is pending and clock.sleeps == 0
    # the parent yields it again at once: the spin thread sleeps until REHAND_AFTER_S has passed
    assert executor.wait_for_ready_callbacks()[0] is pending
    assert clock.sleeps == round(REHAND_AFTER_S / SLEEP_S)


def test_other_tasks_are_handed_out_without_waiting(monkeypatch, clock, executor):
    a, b, c = Task(), Task(), Task()
    scripted(monkeypatch, [a, b, a, c])
    assert executor.wait_for_ready_callbacks()[0] is a
    assert executor.wait_for_ready_callbacks()[0] is b
    assert executor.wait_for_ready_callbacks()[0] is c  # a, handed out 0 s ago, was skipped once
    assert clock.sleeps == 1
