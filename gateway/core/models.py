"""Value objects passed between the broker, drivers, ingest and store."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

MetricValue = float | int | bool


@dataclass(slots=True, frozen=True)
class Reading:
    """One accepted measurement of one logical device."""

    device_id: str
    ts: float  # the reading's own time, Unix epoch seconds
    metrics: dict[str, MetricValue]
    received_at: float
    extra: dict[str, Any] = field(default_factory=dict)  # unknown payload fields, kept verbatim


@dataclass(slots=True, frozen=True)
class Quarantined:
    """A payload we refused, kept with the reason so nobody has to guess why data is missing."""

    received_at: float
    client_id: str | None
    topic: str
    payload: bytes
    reason: str
    device_id: str | None = None
    # Keep the payload whole rather than its first 4 KiB: a part of a hub batch given up (its size was bounded by
    # the broker's packet limit and the hub's byte limit when it arrived), so the batch can be replayed.
    whole: bool = False


@dataclass(slots=True, frozen=True)
class DeviceEvent:
    """Something that happened to a device (online/offline, ...), recorded for the audit and the uplink."""

    ts: float
    device_id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class DeviceState:
    """What the gateway knows about a device right now."""

    device_id: str
    online: bool = False
    last_seen: float | None = None
    last_ts: float | None = None
    last_metrics: dict[str, MetricValue] = field(default_factory=dict)
    status_changed_at: float | None = None


@dataclass(slots=True, frozen=True)
class StatusChange:
    """A device went online or offline."""

    device_id: str
    online: bool
    at: float
    reason: str  # "status" | "connected" | "disconnected" | "startup"


@dataclass(slots=True, frozen=True)
class OutboxDone:
    """These outbox rows were acknowledged by the cloud broker (PUBACK seen): delete them."""

    seqs: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class OutboxPrune:
    """Apply the outbox disk budget and TTL; `now` is when the decision is made."""

    now: float
    max_rows: int
    max_bytes: int
    ttl_seconds: float
    events_hard_cap: int


@dataclass(slots=True, frozen=True)
class RpcDone:
    """A cloud JSON-RPC request was answered: remember the answer, so a repeat is not executed twice."""

    request_id: str
    method: str
    response: str
    at: float


@dataclass(slots=True, frozen=True)
class OutboxEntry:
    """An outbox row as the uplink sends it."""

    seq: int
    kind: str
    device_id: str | None
    ts: float
    body: str


@dataclass(slots=True, frozen=True)
class RowWrite:
    """Upsert (or delete) one row of a control table: command log, schedules, runs, desired layers.

    ``row`` maps column -> value (None, bool, int, float, str, or a dict/list stored as JSON). For an
    upsert it holds the key columns and the columns to set; for a delete only the key columns.
    The store knows each table's key; a table it does not know is a programming error.
    """

    table: str
    row: dict[str, Any]
    delete: bool = False


@dataclass(slots=True, frozen=True)
class HubPartHeld:
    """One part of a hub batch that is not complete yet (CONTRACT section 3), kept in SQLite until its batch
    closes: its PUBACK waits for this row, so a restart resumes the batch instead of losing the part."""

    hub_id: str
    batch_id: str
    part: int
    parts: int
    received_at: float
    payload: bytes


@dataclass(slots=True, frozen=True)
class HubBatchClosed:
    """A hub batch is closed, in one transaction: complete (its readings, and the readings refused on their
    own, quarantined) or given up (every part that arrived, quarantined). Its held parts are removed and its
    id remembered (a part sent again after the close is then known for what it is)."""

    hub_id: str
    batch_id: str
    closed_at: float
    complete: bool
    readings: tuple[Reading, ...]
    quarantined: tuple[Quarantined, ...]
    forget_before: float  # batches closed before this are no longer remembered


StoredPart = tuple[int, bytes, float]  # a held part of a hub batch: (part number, payload, received_at)


@dataclass(slots=True, frozen=True, eq=False)
class HubPartsWanted:
    """The held parts of a hub batch that is closing, read back from SQLite (they are not kept in memory).

    Read after every record put before this one is committed (so after its HubPartHeld rows), by a job on the
    writer's connection; `reply` gets the parts in part order, or the error."""

    hub_id: str
    batch_id: str
    reply: asyncio.Future[list[StoredPart]]


@dataclass(slots=True, frozen=True)
class GatewayEvent:
    """Something that happened to the gateway itself (no device): stored and sent like a DeviceEvent."""

    ts: float
    type: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True, eq=False)
class LifecycleStep:
    """One bounded step of the data lifecycle, run by the store writer in its own transaction after a batch.

    `action`: "newest" reads the newest reading's id; "rollup" folds at most `limit` readings not yet in the
    hourly/daily rollups into them, up to id `cutoff`; "expire"
    deletes at most `limit` rows of `table` older than `cutoff`; "size_cap" deletes at most `limit` of the
    oldest readings while the database holds more than `bytes` (`table` is "readings"); "reclaim" hands at
    most `limit` free pages back to the file system, keeping `bytes` of them. Compaction (store/compaction.py):
    "compact_plan" puts [through, (hour, device)...] of the next device-hours ending by `cutoff` into
    `found`; "compact" moves the readings with id <= `bytes` of the device-hours in `found` into their
    blocks, as many as about `limit` readings take (how many: `found`); "drop_covered"
    deletes the wave's covered rows among `limit` ids after id `cutoff`, the last id looked at (-1: done)
    in `found`. `done` gets how many readings (rows, pages) the step handled and the seconds its transaction
    took, or the error.
    """

    action: str
    table: str
    cutoff: float
    limit: int
    done: asyncio.Future[tuple[int, float]]
    bytes: int = 0
    found: list[Any] = field(default_factory=list)  # what a step finds besides its count (compaction's steps)


StoreRecord = (
    Reading | Quarantined | DeviceEvent | StatusChange | OutboxDone | OutboxPrune | RpcDone | RowWrite
    | HubPartHeld | HubBatchClosed | HubPartsWanted | GatewayEvent | LifecycleStep
)
