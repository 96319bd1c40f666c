"""The tests' cancel helper ends a task whose first cancel Python 3.11's wait_for swallowed.

A simulated device's task in test_control.py was cancelled once and awaited without a bound; now and then
the cancel landed as aiomqtt's publish got its PUBACK, the task went back to waiting for commands, and the
test hung until pytest-timeout ended the whole run (issue 19).
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.fixtures.gateway import cancel_and_wait


def device_task(loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Task[None], asyncio.Future[None]]:
    """A task that waits for a PUBACK (`puback`) with wait_for, as aiomqtt's publish does, then for ever."""
    puback: asyncio.Future[None] = loop.create_future()

    async def serve() -> None:
        await asyncio.wait_for(puback, 10)
        await asyncio.Event().wait()  # the next command that never comes

    return loop.create_task(serve(), name="device"), puback


async def _swallowed_cancel(loop: asyncio.AbstractEventLoop) -> asyncio.Task[None]:
    task, puback = device_task(loop)
    await asyncio.sleep(0)  # the task waits for its PUBACK
    puback.set_result(None)  # the PUBACK arrives...
    task.cancel()  # ...in the same loop iteration as the cancel
    for _ in range(5):
        await asyncio.sleep(0)
    return task


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancel from 3.12 on")
async def test_canary_python_3_11_wait_for_swallows_a_cancel_that_lands_with_its_result() -> None:
    task = await _swallowed_cancel(asyncio.get_running_loop())
    assert not task.done()  # one cancel was not enough: an unbounded await of it hangs
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_cancel_and_wait_ends_a_task_that_swallowed_its_first_cancel() -> None:
    task = await _swallowed_cancel(asyncio.get_running_loop())
    await cancel_and_wait(task, timeout=2)
    assert task.cancelled()


async def test_cancel_and_wait_raises_what_the_task_failed_with_and_is_bounded() -> None:
    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    failing = asyncio.create_task(fails_on_cancel())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(failing)

    release = asyncio.Event()

    async def ignores_cancels_until_released() -> None:
        while not release.is_set():
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                continue

    stubborn = asyncio.create_task(ignores_cancels_until_released(), name="stubborn")
    await asyncio.sleep(0)
    with pytest.raises(AssertionError, match=r"stubborn still runs 0\.3 s after it was cancelled"):
        await cancel_and_wait(stubborn, timeout=0.3)
    release.set()
    await cancel_and_wait(stubborn)
