"""RecentReadings (gateway/ingest/resends.py): a reading sent again is recognised, also after a restart."""

from __future__ import annotations

import asyncio

from gateway.core.clock import ManualClock
from gateway.core.metrics import Metrics
from gateway.core.models import Reading, StoreRecord
from gateway.core.registry import DeviceRegistry
from gateway.ingest.resends import RecentReadings
from gateway.ingest.service import Ingest


def take(recent: RecentReadings, reading: Reading) -> bool:
    """True if taken as new (and remembered), False if recognised as a resend."""
    key = recent.new_content(reading)
    if key is None:
        return False
    recent.remember(reading, key)
    return True


def test_same_time_and_content_is_a_resend() -> None:
    recent = RecentReadings()
    assert take(recent, Reading("AP-01", 10.0, {"pm25": 7.9, "fanSpeed": 2}, 11.0, {"fw": "2.1", "a": [1]}))
    assert not take(recent, Reading("AP-01", 10.0, {"pm25": 7.9, "fanSpeed": 2}, 12.0, {"a": [1], "fw": "2.1"}))
    assert take(recent, Reading("AP-01", 10.0, {"pm25": 8.0, "fanSpeed": 2}, 12.0))  # other content
    assert take(recent, Reading("AP-02", 10.0, {"pm25": 7.9, "fanSpeed": 2}, 12.0, {"fw": "2.1"}))  # other device


def test_not_remembered_until_taken() -> None:
    recent = RecentReadings()
    reading = Reading("AP-01", 10.0, {"pm25": 1.0}, 11.0)
    assert recent.new_content(reading) is not None  # asked, but never queued (a delivery cut short)
    assert take(recent, reading)


def test_restored_from_the_store_and_bounded_per_device() -> None:
    recent = RecentReadings(per_device=3)
    recent.restore([("AP-01", float(ts), {"pm25": float(ts)}, {}) for ts in range(5)])
    assert not take(recent, Reading("AP-01", 4.0, {"pm25": 4.0}, 0.0))
    assert not take(recent, Reading("AP-01", 2.0, {"pm25": 2.0}, 0.0))
    assert take(recent, Reading("AP-01", 1.0, {"pm25": 1.0}, 0.0))  # older than the last three


class _FullQueue:
    """The store's put, standing for a full queue: the first put waits until `room` is set (or is cancelled)."""

    def __init__(self) -> None:
        self.room = asyncio.Event()
        self.queued: list[StoreRecord] = []

    async def put(self, record: StoreRecord) -> None:
        if not self.queued and not self.room.is_set():
            await self.room.wait()
        self.queued.append(record)


def _ingest(store: _FullQueue) -> Ingest:
    return Ingest(put=store.put, receipt=lambda: None, metrics=Metrics(), clock=ManualClock(11.0),
                  registry=DeviceRegistry({"AP-01": "purifier"}))


async def test_a_copy_from_a_second_connection_waits_for_the_first_and_is_not_stored_twice() -> None:
    store = _FullQueue()
    ingest = _ingest(store)
    reading = Reading("AP-01", 1763800000.0, {"pm25": 7.9}, 1763800000.5)
    first = asyncio.create_task(ingest.accept(reading))
    await asyncio.sleep(0)  # the first copy waits for room in the queue
    again = asyncio.create_task(ingest.accept(Reading("AP-01", 1763800000.0, {"pm25": 7.9}, 1763800003.0)))
    for _ in range(5):
        await asyncio.sleep(0)
    # Not acknowledged as a resend while the first copy is not queued (its receipt would not cover it).
    assert not again.done() and store.queued == []
    store.room.set()
    await asyncio.gather(first, again)
    assert store.queued == [reading]


async def test_a_copy_waiting_behind_one_cut_short_is_stored_itself() -> None:
    store = _FullQueue()
    ingest = _ingest(store)
    first = asyncio.create_task(ingest.accept(Reading("AP-01", 1763800000.0, {"pm25": 7.9}, 1763800000.5)))
    await asyncio.sleep(0)
    copy = Reading("AP-01", 1763800000.0, {"pm25": 7.9}, 1763800003.0)
    again = asyncio.create_task(ingest.accept(copy))
    await asyncio.sleep(0)
    first.cancel()  # its connection closed while it waited: never queued, never acknowledged
    await asyncio.gather(first, return_exceptions=True)
    store.room.set()
    await again
    assert store.queued == [copy]


def test_readings_of_other_content_at_the_same_time_are_all_remembered() -> None:
    recent = RecentReadings()
    first = Reading("AP-01", 10.0, {"pm25": 1.0}, 11.0)
    second = Reading("AP-01", 10.0, {"pm25": 2.0}, 11.0)
    third = Reading("AP-01", 10.0, {"pm25": 3.0}, 11.0)
    assert take(recent, first) and take(recent, second) and take(recent, third)
    assert not take(recent, first) and not take(recent, second) and not take(recent, third)


def test_the_ring_keeps_the_last_readings_in_order_past_many_turns() -> None:
    recent = RecentReadings(per_device=4)
    for ts in range(10):
        assert take(recent, Reading("AP-01", float(ts), {"pm25": float(ts)}, 0.0))
    for ts in (6, 7, 8, 9):  # the last four: resends
        assert not take(recent, Reading("AP-01", float(ts), {"pm25": float(ts)}, 0.0))
    assert take(recent, Reading("AP-01", 5.0, {"pm25": 5.0}, 0.0))  # fifth from last: forgotten, taken again


def test_memory_per_device_is_a_few_hundred_bytes() -> None:
    """100 devices past their first 64 readings: the per-device state stays ~0.6 KB (a dict of time -> hash
    per device held ~8 KB)."""
    import tracemalloc

    readings = [Reading(f"AP-{d:03d}", 1000.0 + i, {"pm25": float(i)}, 0.0) for d in range(100) for i in range(100)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        recent = RecentReadings()
        for reading in readings:
            take(recent, reading)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 100 * 1024, held
