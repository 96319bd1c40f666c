"""The batch planner: records -> the rows each statement writes, in commit order, with the outbox rows
numbered. Pure: no database, no event loop; what a record kind writes is its planning function's job
(record_kinds.py), looked up by the record's type in a table passed in.

A plan is re-made for every attempt to commit a batch, from the same first outbox seq: a batch retried
after a refused commit gets the same msgIds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.core.models import OutboxEntry
from gateway.store.sql import INSERT_OUTBOX, Write

if TYPE_CHECKING:
    import aiosqlite

    from gateway.core.metrics import Metrics

# JSON as stored (metrics, extra, event data, outbox bodies): compact, UTF-8 kept, no NaN (not JSON).
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


@dataclass(slots=True)
class JobContext:
    """What a job gets besides the connection: metrics, and the outbox's next seq when the outbox is on."""

    metrics: Metrics
    take_seq: Callable[[], int] | None


class Job(Protocol):
    """Work in its own transaction after the batch's (the outbox budget, later retention): a failure
    there must not replay the batch. A job handles (counts, logs) its own errors."""

    async def __call__(self, conn: aiosqlite.Connection, context: JobContext) -> None: ...


class BatchPlan:
    """The rows of one batch's transaction. Planning functions add to it; the writer runs `steps()`."""

    __slots__ = ("_slots", "jobs", "next_seq", "now", "outbox", "outbox_on", "readings")

    def __init__(self, *, next_seq: int, now: float, outbox_on: bool) -> None:
        self.next_seq = next_seq  # the seq the next outbox row gets
        self.now = now  # the outbox rows' created_at
        self.outbox_on = outbox_on  # readings and events also go to the outbox (uplink enabled)
        self.outbox: list[OutboxEntry] = []  # in seq order
        self.readings = 0
        self.jobs: list[Job] = []
        # order -> runs of (statement, rows); rows a list, or a dict of rows merged by a key
        self._slots: dict[int, list[tuple[Write, list[Any] | dict[Any, Any]]]] = {}

    def rows(self, write: Write) -> list[Any]:
        """The rows `write` is to write, in the order added. Statements of the same order keep the order
        they were added in across each other (control rows: an upsert, a delete, an upsert of one row)."""
        runs = self._slots.get(write.order)
        if runs is None:
            runs = self._slots[write.order] = []
        elif runs[-1][0] is write:
            rows = runs[-1][1]
            assert isinstance(rows, list)
            return rows
        new: list[Any] = []
        runs.append((write, new))
        return new

    def merged(self, write: Write) -> dict[Any, Any]:
        """Rows by a key, the planning function's to merge (one row per device); written in first-added order."""
        runs = self._slots.get(write.order)
        if runs is not None:
            rows = runs[-1][1]
            assert runs[-1][0] is write and isinstance(rows, dict), f"{write.name} shares its order"
            return rows
        new: dict[Any, Any] = {}
        self._slots[write.order] = [(write, new)]
        return new

    def add_outbox(self, kind: str, device_id: str | None, ts: float, body: str) -> None:
        """An outbox row for the uplink (only when the outbox is on; planning functions check outbox_on)."""
        seq = self.next_seq
        self.next_seq = seq + 1
        self.outbox.append(OutboxEntry(seq, kind, device_id, ts, body))
        self.rows(INSERT_OUTBOX).append((seq, kind, device_id, ts, body, len(body), self.now))

    def steps(self) -> list[tuple[Write, Sequence[Any]]]:
        """Each statement with its rows, in commit order."""
        out: list[tuple[Write, Sequence[Any]]] = []
        for order in sorted(self._slots):
            for write, rows in self._slots[order]:
                if rows:
                    out.append((write, list(rows.values()) if isinstance(rows, dict) else rows))
        return out


RecordPlanner = Callable[[Any, BatchPlan], None]


def plan_batch(
    records: Iterable[Any], planners: Mapping[type, RecordPlanner], *, next_seq: int, now: float, outbox_on: bool
) -> BatchPlan:
    """Plan one transaction for `records`; raises TypeError for a record of no registered kind, ValueError
    for one that cannot be stored as it is (a NaN, a bad control row)."""
    plan = BatchPlan(next_seq=next_seq, now=now, outbox_on=outbox_on)
    for rec in records:
        planner = planners.get(type(rec))
        if planner is None:
            raise TypeError(f"not a store record: {rec!r}")
        planner(rec, plan)
    return plan
