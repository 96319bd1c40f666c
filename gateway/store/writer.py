"""The single writer of the database: group commit behind a bounded queue.

Principle 1 of DESIGN.md: a reading is accepted once committed. Producers `await put()`; when the
queue is full they wait (back-pressure on the device that sent it), nothing is dropped. The writer
takes everything waiting (up to max_batch), after at most `commit_interval` seconds since the first
row arrived, and commits it in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from gateway.core.errors import StoreClosedError
from gateway.core.metrics import Metrics
from gateway.core.models import Quarantined, Reading, StatusChange, StoreRecord
from gateway.store.schema import connect, migrate

log = structlog.get_logger(__name__)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

_INSERT_READING = "INSERT INTO readings (device_id, ts, received_at, metrics, extra) VALUES (?, ?, ?, ?, ?)"
_INSERT_QUARANTINE = (
    "INSERT INTO quarantine (received_at, client_id, device_id, topic, payload, reason) VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT = "INSERT INTO events (ts, device_id, type, data) VALUES (?, ?, ?, ?)"
# Latest reading by the reading's own time (a late, older reading must not replace it); last_seen by arrival.
_UPSERT_LATEST = """
INSERT INTO device_state (device_id, last_seen, last_ts, last_metrics) VALUES (?, ?, ?, ?)
ON CONFLICT (device_id) DO UPDATE SET
    last_seen = max(coalesce(device_state.last_seen, 0), excluded.last_seen),
    last_metrics = CASE WHEN device_state.last_ts IS NULL OR excluded.last_ts >= device_state.last_ts
                        THEN excluded.last_metrics ELSE device_state.last_metrics END,
    last_ts = max(coalesce(device_state.last_ts, 0), excluded.last_ts)
"""
_UPSERT_STATUS = """
INSERT INTO device_state (device_id, online, status_changed_at, last_seen) VALUES (?, ?, ?, ?)
ON CONFLICT (device_id) DO UPDATE SET
    online = excluded.online,
    status_changed_at = excluded.status_changed_at,
    last_seen = max(coalesce(device_state.last_seen, 0), excluded.last_seen)
"""


class _Stop:
    pass


_STOP = _Stop()


class StoreWriter:
    """Owns the one writing connection. Start with `open()`, run `run()` as a task, end with `close()`."""

    def __init__(
        self,
        db_path: Path,
        *,
        metrics: Metrics,
        commit_interval: float = 0.005,
        max_batch: int = 1000,
        queue_size: int = 10_000,
        synchronous: str = "NORMAL",
    ) -> None:
        self._db_path = db_path
        self._metrics = metrics
        self._interval = commit_interval
        self._max_batch = max_batch
        self._queue: asyncio.Queue[StoreRecord | _Stop] = asyncio.Queue(maxsize=queue_size)
        self._synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None
        self._closed = False
        self._stopped = asyncio.Event()
        self._enqueued = 0
        self._committed = 0
        self._commit_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Called after each commit with the records it made durable (live feeds, uplink wake-ups).
        self.on_commit: list[Callable[[Sequence[StoreRecord]], None]] = []
        metrics.gauge_callback("gateway_store_queue_depth", self._queue.qsize, "rows waiting for the writer")

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def open(self) -> aiosqlite.Connection:
        self._db_path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = await connect(str(self._db_path), synchronous=self._synchronous)
        found = await migrate(self._conn)
        log.info("store.opened", path=str(self._db_path), schema_from=found)
        return self._conn

    async def put(self, record: StoreRecord) -> None:
        """Queue a record for the next commit; waits while the queue is full."""
        if self._closed:
            raise StoreClosedError("store is closed")
        self._enqueued += 1
        await self._queue.put(record)

    async def flush(self) -> None:
        """Wait until everything queued before this call is committed."""
        target = self._enqueued
        if self._committed >= target:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commit_waiters.append((target, fut))
        await fut

    async def run(self) -> None:
        """The writer loop; returns after close() once the queue is drained."""
        queue = self._queue
        try:
            while True:
                first = await queue.get()
                if isinstance(first, _Stop):
                    return
                batch: list[StoreRecord] = [first]
                if queue.qsize() < self._max_batch and not self._closed:
                    # Bounded wait so that one transaction carries many rows.
                    await asyncio.sleep(self._interval)
                stop = False
                while len(batch) < self._max_batch and not queue.empty():
                    item = queue.get_nowait()
                    if isinstance(item, _Stop):
                        stop = True
                        break
                    batch.append(item)
                await self._commit_retrying(batch)
                if stop:
                    return
        finally:
            self._stopped.set()

    async def close(self) -> None:
        """Stop accepting, commit what is queued, close the connection."""
        if self._closed:
            return
        self._closed = True
        await self._queue.put(_STOP)
        await self._stopped.wait()
        # A record put after _STOP (a producer that was waiting on a full queue) is committed too.
        rest: list[StoreRecord] = []
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not isinstance(item, _Stop):
                rest.append(item)
        if rest:
            await self._commit(rest)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        log.info("store.closed", committed=self._committed)

    async def _commit_retrying(self, batch: list[StoreRecord]) -> None:
        """Keep the batch and try again when the disk refuses (full, locked): never drop accepted rows."""
        delay = 0.1
        failing = False
        while True:
            try:
                await self._commit(batch)
            except sqlite3.Error as exc:
                if not failing:
                    log.error("store.commit_failed", error=str(exc), rows=len(batch))
                    failing = True
                self._metrics.inc("gateway_store_commit_errors_total", 1, "failed transactions (retried)")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if failing:
                log.info("store.commit_recovered", rows=len(batch))
            return

    async def _commit(self, batch: list[StoreRecord]) -> None:
        conn = self._conn
        if conn is None:
            raise StoreClosedError("store is not open")
        readings: list[tuple[Any, ...]] = []
        latest: dict[str, Reading] = {}
        quarantine: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        statuses: dict[str, StatusChange] = {}
        for rec in batch:
            if isinstance(rec, Reading):
                extra = _dumps(rec.extra) if rec.extra else None
                readings.append((rec.device_id, rec.ts, rec.received_at, _dumps(rec.metrics), extra))
                prev = latest.get(rec.device_id)
                if prev is None or rec.ts >= prev.ts:
                    latest[rec.device_id] = rec
            elif isinstance(rec, Quarantined):
                quarantine.append((rec.received_at, rec.client_id, rec.device_id, rec.topic, rec.payload, rec.reason))
            elif isinstance(rec, StatusChange):
                statuses[rec.device_id] = rec
                events.append(
                    (rec.at, rec.device_id, "device.online" if rec.online else "device.offline",
                     _dumps({"reason": rec.reason}))
                )
            else:  # DeviceEvent
                events.append((rec.ts, rec.device_id, rec.type, _dumps(rec.data)))
        await conn.execute("BEGIN")
        try:
            if readings:
                await conn.executemany(_INSERT_READING, readings)
                await conn.executemany(
                    _UPSERT_LATEST,
                    [(r.device_id, r.received_at, r.ts, _dumps(r.metrics)) for r in latest.values()],
                )
            if statuses:
                await conn.executemany(
                    _UPSERT_STATUS, [(s.device_id, int(s.online), s.at, s.at) for s in statuses.values()]
                )
            if quarantine:
                await conn.executemany(_INSERT_QUARANTINE, quarantine)
            if events:
                await conn.executemany(_INSERT_EVENT, events)
            await conn.execute("COMMIT")
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        self._committed += len(batch)
        if readings:
            self._metrics.inc("gateway_readings_committed_total", len(readings), "readings made durable")
        self._metrics.inc("gateway_store_commits_total", 1, "transactions committed")
        for callback in self.on_commit:
            callback(batch)
        if self._commit_waiters:
            still: list[tuple[int, asyncio.Future[None]]] = []
            for target, fut in self._commit_waiters:
                if self._committed >= target:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    still.append((target, fut))
            self._commit_waiters = still
