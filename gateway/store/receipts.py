"""Commit receipts: futures done once the records queued before them are committed.

The broker acknowledges a device's QoS 1 message only when its receipt is done. Receipts whose records
will all be in the writer's next batch share one future, whose target grows with each: under load that
is one future per commit instead of one per message (fewer objects per reading, fewer callbacks when it
is done), and none waits longer than its own records' commit. A receipt asked for after a take, or for a
record beyond what the next batch may take (`next_batch`: max_batch, or less while the writer is paced by the
cloud link, first_lane.py), starts a new one.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.core.errors import StoreClosedError


class _Receipt:
    """A receipt's future, done once `target` records are committed; shared until the writer takes records
    again (`taken`: the records it had taken when this was made)."""

    __slots__ = ("future", "taken", "target")

    def __init__(self, target: int, future: asyncio.Future[None], taken: int) -> None:
        self.target = target
        self.future = future
        self.taken = taken


class Receipts:
    """Counts records queued (`enqueued`), taken into a batch (`taken`) and committed (`committed`, which
    includes records refused for good), and hands out the futures that wait for them."""

    __slots__ = ("_waiters", "committed", "enqueued", "next_batch", "taken")

    def __init__(self, max_batch: int) -> None:
        self.next_batch = max_batch  # what the writer's next batch may take (the writer keeps it current)
        self.enqueued = 0
        self.taken = 0  # so records 1..taken are in a batch
        self.committed = 0
        # In order of their targets, which only grow; the last one may be shared (see receipt()).
        self._waiters: deque[_Receipt] = deque()

    def receipt(self, *, closed: bool) -> asyncio.Future[None] | None:
        """A future for everything queued so far; None if it is committed already. `closed`: nothing
        more will be committed (the future fails at once)."""
        target = self.enqueued
        if self.committed >= target:
            return None
        waiters = self._waiters
        if waiters:
            last = waiters[-1]
            if last.taken == self.taken and target <= self.taken + self.next_batch and not last.future.done():
                last.target = target
                return last.future
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if closed:
            fut.set_exception(StoreClosedError("store is closed"))
        else:
            waiters.append(_Receipt(target, fut, self.taken))
        return fut

    def note_take(self, count: int) -> None:
        """The writer took `count` records: receipts asked for from now on are for records of a later batch."""
        self.taken += count

    def note_committed(self, count: int) -> None:
        """`count` more records are committed (or refused for good): their receipts are done."""
        self.committed += count
        committed = self.committed
        waiters = self._waiters
        while waiters and waiters[0].target <= committed:
            fut = waiters.popleft().future
            if not fut.done():
                fut.set_result(None)

    def fail_all(self) -> None:
        """Nothing more will be committed: fail every receipt still waiting, so nobody waits forever."""
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_exception(StoreClosedError("store closed before this was committed"))
        self._waiters.clear()
