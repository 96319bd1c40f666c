"""The store writer's first lane: records committed in its next transaction, ahead of everything queued;
and the pace it sets for the queue under overload.

The uplink frees a slot of its in-flight window only once the outbox rows of an acknowledged message are
deleted (a crash then resends at most the window), so its throughput is its window per delete. Queued behind
what devices keep sending, under overload that delete would wait for the commits of every reading ahead of it
and the cloud link would starve. Records of this lane skip the queue (and its bound: the uplink holds at most a
window's worth) and commit as their own short transaction at the writer's next turn, before the next batch.
Their callers wait for that commit, not for the queue's receipts (receipts.py counts queued records only).

**Pace under overload.** Skipping the queue is not enough when devices offer more than the gateway can
carry: every reading taken costs the event loop its parsing and the writer its commit, and ingest, which
never waits for anything else, would take the CPU the cloud link needs (without a pace, ~50 readings/s reach
the cloud here while ~4,500/s are stored). So while the cloud link delivers (the lane committed deletes within
PACE_WINDOW_S), the store may run ahead of it by at most one batch (`max_batch` outbox rows committed and not
yet deleted: the lead, `rows` being what each delete stood for). A batch then takes from the queue only what
brings the lead back to that bound, at least PACE_FLOOR, and first waits up to the writer's commit interval
for the cloud link's next delete. Producers wait for room in the queue meanwhile: the embedded broker stops
reading the device's socket and its PUBACKs wait, the Mosquitto ingest client stops reading its own; devices
are slowed to what the cloud takes, and live data does not overflow into the backlog. A cloud link that
delivers nothing (down, or very slow to acknowledge) sets no pace after PACE_WINDOW_S.
"""

from __future__ import annotations

import asyncio

from gateway.core.errors import StoreClosedError
from gateway.core.models import StoreRecord

PACE_FLOOR = 8  # queued records a paced batch takes even when the cloud link is a batch behind
PACE_WINDOW_S = 0.5  # the pace holds this long (loop time) after the lane's last commit that carried rows


class FirstLane:
    """Records waiting for the lane's next commit, with the one future their callers share; the store's lead."""

    __slots__ = ("_committing", "_committing_rows", "_done", "_granting", "_lead", "_paced_until", "_records")

    def __init__(self) -> None:
        self._records: list[StoreRecord] = []
        self._granting = 0  # rows the records waiting stand for
        self._committing_rows = 0  # rows the records being committed stand for
        self._lead = 0  # outbox rows committed and not yet deleted since the cloud link began to deliver
        self._done: asyncio.Future[None] | None = None  # shared by the records waiting
        self._committing: asyncio.Future[None] | None = None  # shared by the records being committed
        self._paced_until = float("-inf")  # loop time

    def __bool__(self) -> bool:
        return bool(self._records)

    def add(self, record: StoreRecord, rows: int) -> asyncio.Future[None]:
        """Queue `record`, which deletes `rows` outbox rows (the pace); the future is done once it is committed
        (shield it: it is shared)."""
        self._records.append(record)
        self._granting += rows
        if self._done is None:
            self._done = asyncio.get_running_loop().create_future()
        return self._done

    def take(self) -> list[StoreRecord]:
        """The records for the writer's next transaction (`committed()` when it is done)."""
        records, self._records = self._records, []
        self._committing, self._done = self._done, None
        self._committing_rows, self._granting = self._granting, 0  # records added from now on: the next take
        return records

    def committed(self, now: float) -> None:
        """The records taken last are committed (or refused for good): their callers go on."""
        if self._committing_rows:
            self._lead = max(0, self._lead - self._committing_rows)
            self._committing_rows = 0
            self._paced_until = now + PACE_WINDOW_S
        done, self._committing = self._committing, None
        if done is not None and not done.done():
            done.set_result(None)

    def created(self, rows: int) -> None:
        """A batch from the queue committed `rows` outbox rows."""
        self._lead += rows

    def behind(self, max_batch: int, now: float) -> bool:
        """The cloud link delivers and the store is a batch ahead of it: the next batch waits for its delete."""
        return now < self._paced_until and self._lead >= max_batch

    def batch_limit(self, max_batch: int, now: float) -> int:
        """How many queued records the writer's next batch may take."""
        if now >= self._paced_until:
            self._lead = 0  # not delivering: what is committed now is the next connection's backlog
            return max_batch
        return min(max_batch, max(PACE_FLOOR, max_batch - self._lead))

    def fail(self) -> None:
        """The store closed: nobody waits for a commit that will not come."""
        self._records = []
        self._granting = self._committing_rows = 0
        for fut in (self._committing, self._done):
            if fut is not None and not fut.done():
                fut.set_exception(StoreClosedError("store closed before this was committed"))
                fut.exception()  # retrieved: a caller that went away must not leave asyncio a warning to log
        self._committing = self._done = None
