"""The store writer's first lane: records committed in its next transaction, ahead of everything queued;
and the pace it sets for the queue under overload.

The uplink frees a slot of its in-flight window only once the outbox rows of an acknowledged message are
deleted (a crash then resends at most the window), so its throughput is its window per delete. Queued behind
what devices keep sending, under overload that delete waited for the commits of every reading ahead of it
and the cloud link starved. Records of this lane skip the queue (and its bound: the uplink holds at most a
window's worth) and commit as their own short transaction at the writer's next turn, before the next batch.
Their callers wait for that commit, not for the queue's receipts (receipts.py counts queued records only).

**Pace under overload.** Skipping the queue is not enough when devices offer more than the gateway can
carry: each batch of queued readings costs the event loop their parsing and the writer their commit, the
cloud link gets one delete (one in-flight window) per batch, and with batches of hundreds it starves. So
while the queue is full (devices wait for room: their sockets are not read, their PUBACKs wait) and the
lane has carried deletes recently, a batch takes from the queue only about as many records as the lane's
records since the last batch stood for (`rows`: the readings the cloud took), at least PACE_FLOOR: devices
are slowed to what the cloud link carries and both keep a share of the CPU. A cloud link that delivers
nothing (down, or slow to acknowledge) sets no pace after PACE_WINDOW_S, and a queue with room is never paced.
"""

from __future__ import annotations

import asyncio

from gateway.core.errors import StoreClosedError
from gateway.core.models import StoreRecord

PACE_FLOOR = 8  # queued records a paced batch takes even when the lane granted none since the last one
PACE_WINDOW_S = 0.5  # the pace holds this long (loop time) after the lane's last commit that carried rows


class FirstLane:
    """Records waiting for the lane's next commit, with the one future their callers share."""

    __slots__ = ("_committing", "_done", "_granted", "_granting", "_paced_until", "_records")

    def __init__(self) -> None:
        self._records: list[StoreRecord] = []
        self._granting = 0  # rows the records waiting (or being committed) stand for
        self._granted = 0  # rows committed since the queue's last batch: what the next paced batch may take
        self._paced_until = float("-inf")  # loop time
        self._done: asyncio.Future[None] | None = None  # shared by the records waiting
        self._committing: asyncio.Future[None] | None = None  # shared by the records being committed

    def __bool__(self) -> bool:
        return bool(self._records)

    def add(self, record: StoreRecord, rows: int) -> asyncio.Future[None]:
        """Queue `record`, which stands for `rows` device records (the pace); the future is done once it is
        committed (shield it: it is shared)."""
        self._records.append(record)
        self._granting += rows
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        return self._done

    def take(self) -> list[StoreRecord]:
        """The records for the writer's next transaction (`committed()` when it is done)."""
        records, self._records = self._records, []
        self._committing, self._done = self._done, None
        return records

    def committed(self, now: float) -> None:
        """The records taken last are committed (or refused for good): their callers go on."""
        if self._granting:
            self._granted += self._granting
            self._granting = 0
            self._paced_until = now + PACE_WINDOW_S
        done, self._committing = self._committing, None
        if done is not None and not done.done():
            done.set_result(None)

    def batch_limit(self, max_batch: int, *, saturated: bool, now: float) -> int:
        """How many queued records the writer's next batch may take (called once per batch)."""
        granted, self._granted = self._granted, 0
        if not saturated or now >= self._paced_until:
            return max_batch
        return min(max_batch, max(PACE_FLOOR, granted))

    def fail(self) -> None:
        """The store closed: nobody waits for a commit that will not come."""
        self._records = []
        for fut in (self._committing, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(StoreClosedError("store closed before this was committed"))
                fut.exception()  # retrieved: a caller that went away must not leave asyncio a warning to log
        self._committing = self._done = None
