"""The single writer of the database: group commit behind a bounded queue.

Principle 1 of DESIGN.md: a reading is accepted once committed. Producers `await put()`; when the
queue is full they wait (back-pressure on the device that sent it), nothing is dropped. The writer
takes everything waiting (up to max_batch), after at most `commit_interval` seconds since the first
row arrived, and commits it in one transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from gateway.core.clock import Clock, SystemClock
from gateway.core.errors import StoreClosedError
from gateway.core.metrics import Metrics
from gateway.core.models import (
    DeviceEvent,
    OutboxDone,
    OutboxEntry,
    OutboxPrune,
    Quarantined,
    Reading,
    RowWrite,
    RpcDone,
    StatusChange,
    StoreRecord,
)
from gateway.store.schema import connect, migrate

log = structlog.get_logger(__name__)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode

# A batch is committed in ONE round trip to the database thread: a script whose rows travel as JSON
# text literals unpacked by SQLite's json_each. Per-row executemany would re-acquire the GIL once per
# row (each re-acquisition waits up to the 5 ms switch interval while the event loop is busy: a
# 1,000-row batch took seconds under load), and every extra round trip costs a thread hand-off
# (at 10 readings/s that overhead alone was ~1.5 % of a core).
_INSERT_READINGS = """
INSERT INTO readings (device_id, ts, received_at, metrics, extra)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]')
FROM json_each({rows});
"""
# Latest reading by the reading's own time (a late, older reading must not replace it); last_seen by arrival.
_LATEST_ON_CONFLICT = """ON CONFLICT (device_id) DO UPDATE SET
    last_seen = max(coalesce(device_state.last_seen, 0), excluded.last_seen),
    last_metrics = CASE WHEN device_state.last_ts IS NULL OR excluded.last_ts >= device_state.last_ts
                        THEN excluded.last_metrics ELSE device_state.last_metrics END,
    last_ts = max(coalesce(device_state.last_ts, 0), excluded.last_ts);
"""
_UPSERT_LATEST = """
INSERT INTO device_state (device_id, last_seen, last_ts, last_metrics)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[2]'), json_extract(value, '$[1]'),
       json_extract(value, '$[3]')
FROM json_each({rows}) WHERE true
""" + _LATEST_ON_CONFLICT
# The same writes as prepared statements, for a trickle committed on the loop's thread (see _commit_trickle).
_INSERT_READING_ROW = "INSERT INTO readings (device_id, ts, received_at, metrics, extra) VALUES (?, ?, ?, ?, ?)"
_UPSERT_LATEST_ROW = (
    "INSERT INTO device_state (device_id, last_seen, last_ts, last_metrics) VALUES (?, ?, ?, ?)\n"
    + _LATEST_ON_CONFLICT
)
_INSERT_OUTBOX_ROW = (
    "INSERT INTO outbox (seq, kind, device_id, ts, body, size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_STATUS = """
INSERT INTO device_state (device_id, online, status_changed_at, last_seen)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[2]')
FROM json_each({rows}) WHERE true
ON CONFLICT (device_id) DO UPDATE SET
    online = excluded.online,
    status_changed_at = excluded.status_changed_at,
    last_seen = max(coalesce(device_state.last_seen, 0), excluded.last_seen);
"""
_INSERT_EVENTS = """
INSERT INTO events (ts, device_id, type, data)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]')
FROM json_each({rows});
"""
_INSERT_OUTBOX = """
INSERT INTO outbox (seq, kind, device_id, ts, body, size, created_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]'), json_extract(value, '$[4]'), length(json_extract(value, '$[4]')), {now!r}
FROM json_each({rows});
"""
_DELETE_OUTBOX = "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each({seqs}));"
_INSERT_RPC = """
INSERT OR IGNORE INTO rpc_log (request_id, method, response, at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
       json_extract(value, '$[3]')
FROM json_each({rows});
"""
_INSERT_QUARANTINE = (
    "INSERT INTO quarantine (received_at, client_id, device_id, topic, payload, reason, size, sha256) VALUES {rows};"
)
QUARANTINE_KEEP_BYTES = 4096


def _text(value: str | None) -> str:
    """An SQL string literal: in SQLite only the quote itself needs escaping (no backslash escapes).

    A NUL cannot appear in a script at all (sqlite3 refuses the whole script), and a client id or
    topic is device-controlled: it becomes U+FFFD instead of stopping the writer.
    """
    if value is None:
        return "NULL"
    return "'" + value.replace("'", "''").replace("\x00", "\ufffd") + "'"


_INSERT_EVENT_ONE = "INSERT INTO events (ts, device_id, type, data) VALUES (?, ?, ?, ?)"


def _quarantine_event(q: Quarantined) -> dict[str, Any]:
    return {
        "reason": q.reason,
        "topic": q.topic,
        "clientId": q.client_id,
        "payload": q.payload[:1024].decode("utf-8", errors="replace"),
        "size": len(q.payload),
    }


def _quarantine_row(q: Quarantined) -> str:
    return (
        f"({float(q.received_at)!r}, {_text(q.client_id)}, {_text(q.device_id)}, {_text(q.topic)}, "
        f"X'{q.payload[:QUARANTINE_KEEP_BYTES].hex()}', {_text(q.reason)}, {len(q.payload)}, "
        f"'{hashlib.sha256(q.payload).hexdigest()}')"
    )


# Control tables written through RowWrite, with their key columns (None: insert only, a history).
ROW_TABLES: dict[str, tuple[str, ...] | None] = {
    "command_log": ("command_id",),
    "schedules": ("id",),
    "schedule_runs": None,
    "desired_layers": ("device_id", "layer"),
    "device_state": ("device_id",),
}


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} cannot be stored")
        return repr(value)
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict | list | tuple):
        return _text(_dumps(value))
    raise ValueError(f"cannot store {type(value).__name__}")


def _row_sql(rec: RowWrite) -> str:
    """One statement for a RowWrite. Table and column names come from our code, never from input."""
    if rec.table not in ROW_TABLES:
        raise ValueError(f"not a control table: {rec.table!r}")
    key = ROW_TABLES[rec.table]
    cols = list(rec.row)
    if not all(c.isidentifier() for c in cols):
        raise ValueError(f"bad column name in {cols!r}")
    if rec.delete:
        if key is None or set(cols) != set(key):
            raise ValueError(f"delete from {rec.table} needs exactly its key {key}")
        where = " AND ".join(f"{c} = {_literal(rec.row[c])}" for c in cols)
        return f"DELETE FROM {rec.table} WHERE {where};"
    values = ", ".join(_literal(rec.row[c]) for c in cols)
    sql = f"INSERT INTO {rec.table} ({', '.join(cols)}) VALUES ({values})"
    if key is not None:
        updates = [c for c in cols if c not in key]
        if updates:
            sets = ", ".join(f"{c} = excluded.{c}" for c in updates)
            sql += f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
        else:
            sql += f" ON CONFLICT ({', '.join(key)}) DO NOTHING"
    return sql + ";"


class _Receipt:
    """A receipt's future, done once `target` records are committed; shared until the writer takes records
    again (`taken`: the records it had taken when this was made)."""

    __slots__ = ("future", "taken", "target")

    def __init__(self, target: int, future: asyncio.Future[None], taken: int) -> None:
        self.target = target
        self.future = future
        self.taken = taken


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _locked(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _transient(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in text for word in ("locked", "busy", "full", "disk i/o", "unable to open")
    )


def _commit_readings_prepared(
    db: sqlite3.Connection,
    readings: list[list[Any]],
    latest: list[list[Any]],
    outbox: list[OutboxEntry],
    now: float,
) -> None:
    """A trickle of readings as prepared statements: the same rows as the script path, without parsing
    a new script and its JSON per reading (~200 us of CPU per reading, measured, against ~55 us)."""
    db.execute("BEGIN")
    db.executemany(_INSERT_READING_ROW, [(r[0], r[1], r[2], r[3], _dumps(r[4]) if r[4] else None) for r in readings])
    db.executemany(_UPSERT_LATEST_ROW, [(r[0], r[2], r[1], r[3]) for r in latest])
    if outbox:
        db.executemany(
            _INSERT_OUTBOX_ROW, [(e.seq, e.kind, e.device_id, e.ts, e.body, len(e.body), now) for e in outbox]
        )
    db.execute("COMMIT")


class _Stop:
    pass


class _Abandoned(Exception):
    """close() ran out of time while the disk kept refusing: the writer loop ends, uncommitted."""


_STOP = _Stop()
INLINE_COMMIT_MAX = 16  # batches up to this many records commit on the loop's thread


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
        outbox: bool = False,
        clock: Clock | None = None,
        idle_linger: float = 0.0,
    ) -> None:
        self._db_path = db_path
        self._outbox = outbox  # also queue readings and events for the cloud (uplink enabled)
        self._clock = clock or SystemClock()
        self._next_seq = 1
        self._metrics = metrics
        self._interval = commit_interval
        self._linger = idle_linger
        self._quiet = False
        self._max_batch = max_batch
        self._queue: asyncio.Queue[StoreRecord | _Stop] = asyncio.Queue(maxsize=queue_size)
        self._synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None
        self._closed = False
        self._stopped = asyncio.Event()
        self._enqueued = 0
        self._committed = 0
        # In order of their targets, which only grow; the last one may be shared (see receipt()).
        self._commit_waiters: deque[_Receipt] = deque()
        self._taken = 0  # records taken from the queue so far (so records 1.._taken are in a batch)
        self._batch_wait: asyncio.Future[None] | None = None
        self._urgent = False  # a flush(urgent=True) is waiting: the next batch commits without pausing
        self._retry_wait: asyncio.Future[None] | None = None  # a back-off pause after a refused commit
        self._abandoned = False  # close() ran out of time
        # Called after each commit with the records it made durable (live feeds, uplink wake-ups).
        self.on_commit: list[Callable[[Sequence[StoreRecord]], None]] = []
        # Called after each commit with the outbox rows it created (the uplink's live lane).
        self.on_outbox: list[Callable[[Sequence[OutboxEntry]], None]] = []
        metrics.gauge_callback("gateway_store_queue_depth", self._queue.qsize, "rows waiting for the writer")

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def last_seq(self) -> int:
        """The last outbox seq committed or being committed (msgIds up to it exist or existed)."""
        return self._next_seq - 1

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def open(self) -> aiosqlite.Connection:
        self._db_path.parent.mkdir(parents=True, exist_ok=True)
        # A file that cannot be opened at all (a directory, no permission) fails here, before aiosqlite starts a
        # worker thread that a failed connect leaves running.
        sqlite3.connect(str(self._db_path)).close()
        self._conn = await connect(str(self._db_path), synchronous=self._synchronous, any_thread=True)
        try:
            found = await migrate(self._conn)
            async with self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'") as cur:
                row = await cur.fetchone()
        except BaseException:
            await self._conn.close()  # its thread would keep the process alive
            self._conn = None
            raise
        self._next_seq = (int(row[0]) if row else 0) + 1
        log.info("store.opened", path=str(self._db_path), schema_from=found, next_seq=self._next_seq)
        return self._conn

    async def put(self, record: StoreRecord) -> None:
        """Queue a record for the next commit; waits while the queue is full."""
        if self._closed:
            raise StoreClosedError("store is closed")
        await self._queue.put(record)
        # Counted once queued (in the same step: the writer cannot have taken it yet). Counted before the
        # wait, a put cancelled while the queue was full left a record every receipt waited for in vain.
        self._enqueued += 1

    async def flush(self, *, urgent: bool = False) -> None:
        """Wait until everything queued before this call is committed.

        `urgent` cuts the writer's batching wait short: the uplink frees an in-flight slot only once
        its outbox row is deleted, so its throughput is one commit cycle per window.
        """
        fut = self.receipt()
        if fut is None:
            return
        if urgent:
            # Sticky until the writer takes its next batch: the caller usually flushes right after its
            # put(), before the writer has even woken up, so cutting only a wait already begun missed most.
            self._urgent = True
            if self._batch_wait is not None and not self._batch_wait.done():
                self._batch_wait.set_result(None)
        await asyncio.shield(fut)  # shared with other receipts: a cancelled caller must not cancel it for them

    def receipt(self) -> asyncio.Future[None] | None:
        """A future done once everything queued so far is committed; None if it already is.

        The broker acknowledges a device's QoS 1 message only when this is done, so a crash or power cut
        never loses a reading the device was told is safe. It fails with StoreClosedError if the store
        closes first. Do not cancel it (await it through asyncio.shield): it is shared.

        Receipts whose records will all be in the writer's next batch share one future, whose target
        grows with each: under load that is one future per commit instead of one per message (fewer
        objects per reading, and fewer callbacks when it is done), and none waits longer than its own
        records' commit. A receipt asked for after a take, or for a record beyond the next batch's
        max_batch, starts a new one.
        """
        target = self._enqueued
        if self._committed >= target:
            return None
        waiters = self._commit_waiters
        if waiters:
            last = waiters[-1]
            if last.taken == self._taken and target <= self._taken + self._max_batch and not last.future.done():
                last.target = target
                return last.future
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed and self._stopped.is_set():
            fut.set_exception(StoreClosedError("store is closed"))
        else:
            waiters.append(_Receipt(target, fut, self._taken))
        return fut

    async def run(self) -> None:
        """The writer loop; returns after close() once the queue is drained."""
        queue = self._queue
        loop = asyncio.get_running_loop()
        last_commit = -1e9
        try:
            await self._no_lock_waits()
            while True:
                first = await queue.get()
                if isinstance(first, _Stop):
                    return
                batch: list[StoreRecord] = [first]
                busy = loop.time() - last_commit < 4 * self._interval
                # Under steady load, wait a bounded moment so one transaction carries many rows. After a
                # quiet spell, commit at once (the wait would batch nothing and cost a timer wake-up; on
                # small boards wake-ups are what idle CPU is made of), unless told to linger.
                self._quiet = not busy  # only a trickle commits on the loop's thread (see _commit)
                pause = self._interval if busy else self._linger
                if pause > 0 and queue.qsize() < self._max_batch and not self._closed and not self._urgent:
                    wait = self._batch_wait = loop.create_future()
                    timer = loop.call_later(pause, _resolve, wait)
                    try:
                        await wait
                    finally:
                        timer.cancel()
                        self._batch_wait = None
                stop = False
                self._urgent = False  # what an urgent flush waits for is queued: it is in this batch
                while len(batch) < self._max_batch and not queue.empty():
                    item = queue.get_nowait()
                    if isinstance(item, _Stop):
                        stop = True
                        break
                    batch.append(item)
                self._note_take(batch)
                await self._commit_retrying(batch)
                last_commit = loop.time()
                if stop:
                    return
        except _Abandoned:
            return  # close() ran out of time and counted what is left
        finally:
            self._stopped.set()

    async def _no_lock_waits(self) -> None:
        """From here on (start-up reads may still wait) the writer never waits inside SQLite for a lock
        another process holds (an installer's sqlite3 shell, a backup tool): a trickle commits on the event
        loop's thread, where waiting out the busy timeout froze the whole daemon for 5 s per attempt, and
        close() must be able to stop at its deadline. A refused commit is retried with a back-off instead
        (_commit_retrying)."""
        if self._conn is not None:
            await self._conn.execute("PRAGMA busy_timeout=0")

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting, commit what is queued, close the connection.

        `timeout` bounds the whole close (the daemon has a shutdown budget): if the disk keeps refusing
        (full, locked by another process), the writer gives up then, and the records not committed are
        counted and logged. QoS 1 readings among them were never acknowledged, so their devices send
        them again; a close that waited forever would lose them all the same at systemd's SIGKILL.
        """
        if self._closed:
            return
        self._closed = True
        if self._batch_wait is not None and not self._batch_wait.done():
            self._batch_wait.set_result(None)  # no lingering on the way out
        try:
            async with asyncio.timeout(timeout):
                await self._queue.put(_STOP)
                await self._stopped.wait()
                # A record put after _STOP (a producer that was waiting on a full queue) is committed too.
                rest: list[StoreRecord] = []
                while not self._queue.empty():
                    item = self._queue.get_nowait()
                    if not isinstance(item, _Stop):
                        rest.append(item)
                self._note_take(rest)
                if rest:
                    await self._commit_retrying(rest)
        except (TimeoutError, _Abandoned):
            await self._abandon(timeout)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        for waiter in self._commit_waiters:  # nothing more will be committed: do not leave anyone waiting
            if not waiter.future.done():
                waiter.future.set_exception(StoreClosedError("store closed before this was committed"))
        self._commit_waiters.clear()
        log.info("store.closed", committed=self._committed)

    async def _abandon(self, timeout: float | None) -> None:
        """Close ran out of time: stop the writer loop where it is (a statement, a back-off pause)."""
        self._abandoned = True
        lost = self._enqueued - self._committed
        self._metrics.inc("gateway_store_rows_lost_at_close_total", lost, "records not committed by the shutdown "
                          "deadline (the disk kept refusing)")
        log.error("store.close_gave_up", uncommitted=lost, timeout_s=timeout)
        if self._retry_wait is not None and not self._retry_wait.done():
            self._retry_wait.set_result(None)
        if self._conn is not None:
            self._conn._conn.interrupt()  # thread-safe: ends a statement still running (a slow disk)
        await self._stopped.wait()

    async def _commit_retrying(self, batch: list[StoreRecord]) -> None:
        """Commit a batch; never drop accepted rows because the disk said no for a while.

        A transient refusal (locked, busy, full, I/O) keeps the batch and retries with back-off. Any
        other error means some record cannot be stored as it is: the records are then committed one
        by one, so one bad record cannot hold up everyone else's; the ones refused are logged,
        counted and skipped.
        """
        delay = 0.1
        failing = False
        while True:
            try:
                await self._commit(batch)
            except (sqlite3.Error, ValueError) as exc:  # ValueError: a script sqlite3 refuses to run
                if self._abandoned:  # close() gave up (an interrupted statement lands here too)
                    raise _Abandoned from exc
                if not isinstance(exc, sqlite3.Error) or not _transient(exc):
                    await self._commit_one_by_one(batch)
                    return
                if not failing:
                    log.error("store.commit_failed", error=str(exc), rows=len(batch))
                    failing = True
                self._metrics.inc("gateway_store_commit_errors_total", 1, "failed transactions (retried)")
                loop = asyncio.get_running_loop()
                pause = self._retry_wait = loop.create_future()
                timer = loop.call_later(delay, _resolve, pause)
                try:
                    await pause  # cut short by close() when it gives up
                finally:
                    timer.cancel()
                    self._retry_wait = None
                if self._abandoned:
                    raise _Abandoned from exc
                # A lock is usually someone's short transaction: retry it soon. A full or failing disk: slower.
                delay = min(delay * 2, 1.0 if _locked(exc) else 5.0)
                continue
            if failing:
                log.info("store.commit_recovered", rows=len(batch))
            return

    async def _prune(self, conn: aiosqlite.Connection, rule: OutboxPrune) -> None:
        """Disk budget and TTL: the oldest telemetry goes first; events only past their hard cap."""
        dropped: dict[str, int] = {}

        async def delete(kind: str, sql: str, params: tuple[Any, ...]) -> None:
            cur = await conn.execute(sql, params)
            if cur.rowcount > 0:
                dropped[kind] = dropped.get(kind, 0) + cur.rowcount

        await conn.execute("BEGIN")
        await delete("telemetry", "DELETE FROM outbox WHERE kind = 'telemetry' AND created_at < ?",
                     (rule.now - rule.ttl_seconds,))
        await delete("event", "DELETE FROM outbox WHERE kind = 'event' AND created_at < ?",
                     (rule.now - rule.ttl_seconds,))
        async with conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox") as cur:
            count_row = await cur.fetchone()
        rows, size = (int(count_row[0]), int(count_row[1])) if count_row else (0, 0)
        if rows > rule.max_rows or size > rule.max_bytes:
            # Oldest telemetry until both limits hold (average row size estimates the bytes to free).
            excess_rows = rows - rule.max_rows
            average = size / rows if rows else 1.0
            excess_bytes = int((size - rule.max_bytes) / average) + 1 if size > rule.max_bytes else 0
            await delete(
                "telemetry",
                "DELETE FROM outbox WHERE seq IN "
                "(SELECT seq FROM outbox WHERE kind = 'telemetry' ORDER BY seq LIMIT ?)",
                (max(excess_rows, excess_bytes),),
            )
        await delete(
            "event",
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE kind = 'event' ORDER BY seq DESC "
            "LIMIT -1 OFFSET ?)",
            (rule.events_hard_cap,),
        )
        if dropped:
            data = {"dropped": dropped, "reason": "outbox budget or TTL"}
            await conn.execute(_INSERT_EVENT_ONE, (rule.now, None, "outbox.dropped", _dumps(data)))
            if self._outbox:
                body = _dumps({"type": "outbox.dropped", "data": data})
                await conn.execute(
                    "INSERT INTO outbox (seq, kind, device_id, ts, body, size, created_at) "
                    "VALUES (?, 'event', NULL, ?, ?, ?, ?)",
                    (self._next_seq, rule.now, body, len(body), rule.now),
                )
                self._next_seq += 1
            for kind, count in dropped.items():
                self._metrics.inc("gateway_outbox_dropped_total", count, "outbox rows given up", kind=kind)
            log.warning("outbox.dropped", dropped=dropped)
        await conn.execute("COMMIT")

    async def _commit_one_by_one(self, batch: list[StoreRecord]) -> None:
        for rec in batch:
            try:
                await self._commit([rec])
            except (sqlite3.Error, ValueError) as exc:
                if isinstance(exc, sqlite3.Error) and _transient(exc):
                    await self._commit_retrying([rec])
                    continue
                self._committed += 1  # handled: it will not be retried
                self._metrics.inc("gateway_store_rows_refused_total", 1, "records the database refused")
                log.error("store.record_refused", error=str(exc), record=repr(rec)[:500])
                self._wake_waiters()  # a flush() waiting for this record must not wait for the next commit

    def _notify(self, callback: Callable[[Any], None], records: Sequence[Any]) -> None:
        try:
            callback(records)
        except Exception:
            self._metrics.inc("gateway_store_listener_errors_total", 1, "commit listeners that raised")
            log.exception("store.listener_failed", listener=getattr(callback, "__qualname__", repr(callback)))

    async def _commit(self, batch: list[StoreRecord]) -> None:
        conn = self._conn
        if conn is None:
            raise StoreClosedError("store is not open")
        readings: list[list[Any]] = []  # [device_id, ts, received_at, metrics text, extra]
        latest: dict[str, list[Any]] = {}
        quarantine: list[str] = []
        events: list[list[Any]] = []  # [ts, device_id, type, data]
        statuses: dict[str, list[Any]] = {}  # device_id -> [device_id, online, at]
        done: list[int] = []
        rpc: list[list[Any]] = []
        prunes: list[OutboxPrune] = []
        outbox: list[OutboxEntry] = []
        row_writes: list[str] = []
        seq = self._next_seq
        for rec in batch:
            if isinstance(rec, Reading):
                metrics = _dumps(rec.metrics)
                row = [rec.device_id, rec.ts, rec.received_at, metrics, rec.extra or None]
                readings.append(row)
                # The device's newest reading by its own time; last_seen is its latest arrival even when
                # that was a late, older reading (a copy: `row` also goes to the readings table).
                prev = latest.get(rec.device_id)
                if prev is None:
                    latest[rec.device_id] = row[:4]
                elif rec.ts >= prev[1]:
                    latest[rec.device_id] = [rec.device_id, rec.ts, max(prev[2], rec.received_at), metrics]
                else:
                    prev[2] = max(prev[2], rec.received_at)
                if self._outbox:
                    outbox.append(OutboxEntry(seq, "telemetry", rec.device_id, rec.ts, metrics))
                    seq += 1
                continue
            if isinstance(rec, OutboxDone):
                done.extend(rec.seqs)
                continue
            if isinstance(rec, RpcDone):
                rpc.append([rec.request_id, rec.method, rec.response, rec.at])
                continue
            if isinstance(rec, OutboxPrune):
                prunes.append(rec)
                continue
            if isinstance(rec, RowWrite):
                row_writes.append(_row_sql(rec))
                continue
            event: list[Any]
            if isinstance(rec, Quarantined):
                quarantine.append(_quarantine_row(rec))
                event = [rec.received_at, rec.device_id, "quarantine", _quarantine_event(rec)]
            elif isinstance(rec, StatusChange):
                statuses[rec.device_id] = [rec.device_id, int(rec.online), rec.at]
                kind = "device.online" if rec.online else "device.offline"
                event = [rec.at, rec.device_id, kind, {"reason": rec.reason}]
            elif isinstance(rec, DeviceEvent):
                event = [rec.ts, rec.device_id, rec.type, rec.data]
            else:
                raise TypeError(f"not a store record: {rec!r}")
            events.append(event)
            if self._outbox:
                body = _dumps({"type": event[2], "data": event[3]})
                outbox.append(OutboxEntry(seq, "event", event[1], event[0], body))
                seq += 1
        # A trickle (after a quiet spell, a few records) commits on the loop's thread: SQLite here beats
        # ~0.5 ms of CPU handing it to the worker thread and back (two thread wake-ups per reading were
        # most of a quiet gateway's CPU). Never under load: commits on the loop's thread would shrink the
        # batches and starve the broker.
        trickle = self._quiet and len(batch) <= INLINE_COMMIT_MAX
        try:
            if trickle and readings and not (row_writes or statuses or events or quarantine or done or rpc):
                _commit_readings_prepared(conn._conn, readings, list(latest.values()), outbox, self._clock.now())
            else:
                statements = list(row_writes)
                if readings:
                    statements.append(_INSERT_READINGS.format(rows=_text(_dumps(readings))))
                    statements.append(_UPSERT_LATEST.format(rows=_text(_dumps(list(latest.values())))))
                if statuses:
                    statements.append(_UPSERT_STATUS.format(rows=_text(_dumps(list(statuses.values())))))
                if events:
                    statements.append(_INSERT_EVENTS.format(rows=_text(_dumps(events))))
                if quarantine:
                    statements.append(_INSERT_QUARANTINE.format(rows=", ".join(quarantine)))
                if outbox:
                    rows = [[e.seq, e.kind, e.device_id, e.ts, e.body] for e in outbox]
                    statements.append(_INSERT_OUTBOX.format(rows=_text(_dumps(rows)), now=float(self._clock.now())))
                if done:
                    statements.append(_DELETE_OUTBOX.format(seqs=_text(_dumps(done))))
                if rpc:
                    statements.append(_INSERT_RPC.format(rows=_text(_dumps(rpc))))
                if statements:
                    await self._run_script("BEGIN;\n" + "\n".join(statements) + "\nCOMMIT;", inline=trickle)
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
        self._next_seq = seq
        for prune in prunes:  # their own transactions: a failure here must not replay the batch above
            try:
                await self._prune(conn, prune)
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                self._metrics.inc("gateway_outbox_prune_errors_total", 1, "failed budget/TTL passes")
                log.error("outbox.prune_failed", error=str(exc))
        # The batch is durable from here on: nothing below may make the caller think it failed (a retry
        # would store every row a second time), so listeners' errors are contained and counted.
        if outbox:
            for outbox_callback in self.on_outbox:
                self._notify(outbox_callback, outbox)
        self._committed += len(batch)
        if readings:
            self._metrics.inc("gateway_readings_committed_total", len(readings), "readings made durable")
        self._metrics.inc("gateway_store_commits_total", 1, "transactions committed")
        for callback in self.on_commit:
            self._notify(callback, batch)
        self._wake_waiters()

    async def _run_script(self, text: str, *, inline: bool) -> None:
        conn = self._conn
        if conn is None:
            raise StoreClosedError("store is not open")
        if inline:
            conn._conn.executescript(text)  # on the loop's thread: a trickle (see _commit)
        else:
            await conn.executescript(text)

    def _note_take(self, batch: list[StoreRecord]) -> None:
        """Receipts asked for from now on are for records of a later batch."""
        self._taken += len(batch)

    def _wake_waiters(self) -> None:
        waiters = self._commit_waiters
        committed = self._committed
        while waiters and waiters[0].target <= committed:
            fut = waiters.popleft().future
            if not fut.done():
                fut.set_result(None)
