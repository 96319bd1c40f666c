"""The control loop: effects in order, the one timer on the injected clock, shutdown flushing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.control.command_model import Ignored, Send
from gateway.control.loop import MAX_SLEEP_S, ControlLoop, Item
from gateway.core.clock import ManualClock
from gateway.core.device_commands import OutgoingCommand, TurnOn
from gateway.core.metrics import Metrics
from gateway.core.models import DeviceEvent


def event(n: int) -> DeviceEvent:
    return DeviceEvent(float(n), "AP-01", "test", {"n": n})


class Recorder:
    def __init__(self) -> None:
        self.clock = ManualClock()
        self.metrics = Metrics()
        self.performed: list[Item] = []
        self.ticks: list[float] = []
        self.deadline: float | None = None
        self.fail_on: set[int] = set()
        self.ticked = asyncio.Event()
        self.loop = ControlLoop(clock=self.clock, metrics=self.metrics, perform=self.perform, tick=self.tick,
                                deadline=lambda now: self.deadline)

    async def perform(self, item: Item) -> None:
        if isinstance(item, DeviceEvent) and item.data["n"] in self.fail_on:
            raise RuntimeError("disk full")
        self.performed.append(item)

    def tick(self, now: float) -> None:
        self.ticks.append(now)
        self.ticked.set()

    async def next_tick(self) -> float:
        self.ticked.clear()
        await asyncio.wait_for(self.ticked.wait(), 5)
        return self.ticks[-1]


@pytest.fixture
async def running() -> AsyncIterator[Recorder]:
    r = Recorder()
    task = asyncio.create_task(r.loop.run())
    await r.next_tick()  # started: the first tick
    yield r
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_effects_are_performed_in_order_and_a_failure_does_not_stop_the_rest(running: Recorder) -> None:
    running.fail_on = {2}
    running.loop.queue(event(1), event(2))
    running.loop.queue(event(3))
    await asyncio.wait_for(running.loop.drained(), 5)
    assert [e.data["n"] for e in running.performed if isinstance(e, DeviceEvent)] == [1, 3]
    assert running.metrics.value("gateway_control_errors_total") == 1


async def test_a_wake_ticks_at_the_clocks_time(running: Recorder) -> None:
    running.clock.advance(3600)  # a test moves time instead of sleeping
    running.loop.wake()
    assert await running.next_tick() == running.clock.now()


def test_the_timer_sleeps_until_the_next_deadline_and_never_longer_than_the_cap() -> None:
    r = Recorder()
    assert r.loop.next_wakeup_delay() == MAX_SLEEP_S  # nothing waits on time
    r.deadline = r.clock.now() + 12.5
    assert r.loop.next_wakeup_delay() == 12.5
    r.deadline = r.clock.now() + 3600
    assert r.loop.next_wakeup_delay() == MAX_SLEEP_S  # a stepped wall clock is noticed within the cap
    r.clock.advance(3601)
    assert r.loop.next_wakeup_delay() == 0.0


async def test_shutdown_stores_what_is_queued_and_publishes_nothing() -> None:
    r = Recorder()
    send = Send(OutgoingCommand("c-1", "AP-01", TurnOn(), 1.0), 1)
    r.loop.queue(event(1), send, Ignored("AP-01", "c-9", "unknown command"), event(2))
    await r.loop.flush_records()
    assert r.performed == [event(1), event(2)]


async def test_drained_returns_at_once_when_nothing_is_queued() -> None:
    r = Recorder()
    await asyncio.wait_for(r.loop.drained(), 1)
