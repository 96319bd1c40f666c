"""The supervisor restarts a failing task with a doubling, jittered back-off and keeps its health."""

from __future__ import annotations

import asyncio

from gateway.core.clock import ManualClock
from gateway.core.metrics import Metrics
from gateway.core.supervisor import Health, Supervisor


class Sleeps:
    """Records each back-off instead of waiting it out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


async def test_a_failing_task_is_restarted_with_doubling_back_off_until_it_is_up() -> None:
    sleeps = Sleeps()
    sup = Supervisor(clock=ManualClock(), metrics=Metrics(), initial_backoff=1.0, max_backoff=4.0,
                     sleep=sleeps, jitter=lambda: 1.0)
    attempts = 0
    up = asyncio.Event()

    async def flaky(health: Health) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 4:
            raise OSError(f"bus down #{attempts}")
        health.up()
        up.set()
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as tg:
        task = sup.start(tg, "link:bus", flaky)
        await up.wait()
        health = sup.report()["link:bus"]
        assert health["state"] == "up" and health["failures"] == 0 and health["restarts"] == 4
        assert health["lastError"] == "OSError: bus down #4"
        task.cancel()
    assert sleeps.delays == [1.0, 2.0, 4.0, 4.0]  # doubling, capped (jitter pinned to its top)


async def test_jitter_keeps_each_delay_between_half_and_all_of_the_back_off() -> None:
    sleeps = Sleeps()
    sup = Supervisor(clock=ManualClock(), metrics=Metrics(), initial_backoff=2.0, sleep=sleeps, jitter=lambda: 0.0)
    failures = 0
    third = asyncio.Event()

    async def fails_twice(health: Health) -> None:
        nonlocal failures
        failures += 1
        if failures <= 2:
            raise RuntimeError("boom")
        third.set()
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as tg:
        task = sup.start(tg, "t", fails_twice)
        await third.wait()
        task.cancel()
    assert sleeps.delays == [1.0, 2.0]


async def test_a_task_that_ends_on_its_own_is_restarted_but_not_after_stop() -> None:
    sleeps = Sleeps()
    metrics = Metrics()
    sup = Supervisor(clock=ManualClock(), metrics=metrics, sleep=sleeps, jitter=lambda: 1.0)
    runs = 0

    async def returns(health: Health) -> None:
        nonlocal runs
        runs += 1
        if runs == 2:
            sup.stop()

    async with asyncio.TaskGroup() as tg:
        task = sup.start(tg, "uplink", returns)
    assert task.done() and not task.cancelled()  # ended without taking the TaskGroup down
    assert runs == 2 and len(sleeps.delays) == 1
    assert sup.report()["uplink"]["lastError"] == "ended on its own"
    assert metrics.value("gateway_supervised_restarts_total", task="uplink") == 1


async def test_a_task_that_ran_long_enough_counts_as_up_without_saying_so() -> None:
    sup = Supervisor(clock=ManualClock(), metrics=Metrics(), stable_after=0.01)
    started = asyncio.Event()

    async def quiet(health: Health) -> None:
        started.set()
        await asyncio.Event().wait()

    async with asyncio.TaskGroup() as tg:
        task = sup.start(tg, "quiet", quiet)
        await started.wait()
        assert sup.report()["quiet"]["state"] == "starting"
        await asyncio.sleep(0.05)  # loop time past stable_after: the supervisor's own timer has fired
        assert sup.report()["quiet"]["state"] == "up"
        task.cancel()
