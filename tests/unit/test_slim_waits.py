"""Slimmed asyncio Queues and Events behave as asyncio's own: the broker's connections run on them."""

from __future__ import annotations

import asyncio
import collections
import tracemalloc

import pytest

from gateway.broker.amqtt.slim_waits import new_event, slim_event, slim_queue


async def test_a_slim_event_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    event = new_event()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert len(event._waiters) == 3  # type: ignore[attr-defined]  # the cancelled one is gone
    event.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1) == [True, True, True]
    assert await event.wait() is True  # set: no wait at all
    event.clear()
    assert not event.is_set()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    event.set()
    assert await asyncio.wait_for(late, 1) is True
    assert not event._waiters  # type: ignore[attr-defined]


@pytest.mark.parametrize("items", [False, True], ids=["items-in-deque", "items-in-list"])
async def test_a_slim_queue_keeps_order_blocks_getters_and_putters_and_joins(items: bool) -> None:
    queue: asyncio.Queue[int] = slim_queue(asyncio.Queue(maxsize=2), items=items)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put(1)
    assert await asyncio.wait_for(getter, 1) == 1
    queue.task_done()
    await queue.put(2)
    await queue.put(3)
    putter = asyncio.create_task(queue.put(4))  # full: waits for room
    await asyncio.sleep(0)
    assert not putter.done()
    assert queue.get_nowait() == 2
    await asyncio.wait_for(putter, 1)
    assert [queue.get_nowait(), queue.get_nowait()] == [3, 4]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    joined = asyncio.create_task(queue.join())
    await asyncio.sleep(0)
    assert not joined.done()  # three taken, none marked done yet
    for _ in range(3):
        queue.task_done()
    await asyncio.wait_for(joined, 1)


async def test_a_cancelled_getter_does_not_swallow_the_next_item() -> None:
    queue: asyncio.Queue[str] = slim_queue(asyncio.Queue())
    first, second = asyncio.create_task(queue.get()), asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    queue.put_nowait("x")
    assert await asyncio.wait_for(second, 1) == "x"


async def test_slimming_leaves_a_waiter_list_in_use_alone() -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    slim_event(event)  # something waits: its deque stays, with the waiter in it
    assert isinstance(event._waiters, collections.deque)  # type: ignore[attr-defined]
    event.set()
    assert await asyncio.wait_for(waiter, 1) is True


async def test_slim_objects_cost_a_fraction_of_asyncio_s_own() -> None:
    def cost(make: object) -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            kept = [make() for _ in range(200)]  # type: ignore[operator]
            return (tracemalloc.get_traced_memory()[0] - before) // len(kept)
        finally:
            tracemalloc.stop()

    assert cost(lambda: slim_queue(asyncio.Queue())) < cost(asyncio.Queue) / 2
    assert cost(new_event) < cost(asyncio.Event) / 3
