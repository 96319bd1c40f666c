"""The store writer's bounded queue: records in arrival order, plus the markers that stop or wake the writer.

Producers wait for room when it is full (back-pressure on the device that sent the record). Besides records
it carries two markers: the stop close() sends, and a wake-up for a writer that waits on an empty queue while
its first lane (first_lane.py) has records, which do not go through the queue.
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.core.models import StoreRecord


class Marker:
    """A queue item that is not a record: STOP, or the wake-up."""


STOP = Marker()
_WAKE = Marker()


class WriterQueue:
    __slots__ = ("_getting", "_queue")

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[StoreRecord | Marker] = asyncio.Queue(maxsize=maxsize)
        self._getting = False  # the writer waits on the (empty) queue

    def qsize(self) -> int:
        return self._queue.qsize()

    async def put(self, item: StoreRecord | Marker) -> None:
        await self._queue.put(item)

    async def get(self) -> StoreRecord | Marker:
        """The next record, STOP, or the wake-up (any other Marker)."""
        self._getting = True
        try:
            return await self._queue.get()
        finally:
            self._getting = False

    def wake(self) -> None:
        """Wake a writer waiting on the empty queue (a full queue has woken it already)."""
        if self._getting:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(_WAKE)

    def take(self, batch: list[StoreRecord], limit: int) -> bool:
        """Move records waiting into `batch` until it holds `limit`; True if STOP came (nothing after it is taken)."""
        queue = self._queue
        while len(batch) < limit and not queue.empty():
            item = queue.get_nowait()
            if isinstance(item, Marker):
                if item is STOP:
                    return True
                continue
            batch.append(item)
        return False

    def rest(self) -> list[StoreRecord]:
        """Every record still queued, after STOP too (a producer that was waiting on the full queue)."""
        batch: list[StoreRecord] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, Marker):
                batch.append(item)
        return batch
