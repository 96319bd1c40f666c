"""The data lifecycle's steps (a LifecycleStep record): each a planner.Job in its own short transaction on the
writer's connection, after a batch, so deleting never holds up more than one step's worth of ingest.

* newest: the newest reading's id (what a catch-up folds up to); rollup: the rollups' catch-up (rollups.py).
* compact_plan, compact, drop_covered: the three kinds of compaction step (compaction.py).
* expire: at most `limit` rows of one table older than the cut-off. Readings and rollups are deleted per
  device through their (device_id, time) keys, the devices found by an index skip-scan: a step costs a
  probe per device plus its rows, never a table scan. A reading the rollups do not hold yet is kept, and so is
  the newest row (readings' ids are never handed out twice).
  Compacted readings go a whole device-hour row at a time; the hour a cut-off falls in is rewritten without
  the readings before it. The outbox is not a table retention knows (its own budget bounds it).
* size_cap: over the cap (pages in use, not the file's free pages), the oldest hour of raw readings across
  all devices, rows and compacted, at most about `limit` readings.
* reclaim: incremental auto-vacuum of at most `limit` pages beyond the free space kept (a database created
  before the gateway had auto-vacuum has none: its free pages are reused by new rows instead).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from functools import partial

import aiosqlite
import structlog

from gateway.core.models import LifecycleStep
from gateway.store import aiosqlite_access
from gateway.store.compaction import compact_hours, drop_covered, hour_of, plan_wave
from gateway.store.planner import JobContext
from gateway.store.reading_blocks import decode, encode
from gateway.store.rollups import HOUR, WATERMARK, catch_up, newest_id

log = structlog.get_logger(__name__)

# The distinct device ids of table {t}, one index probe each (SQLite has no skip-scan without ANALYZE data).
_DEVICES = (
    "WITH RECURSIVE d(id) AS (SELECT (SELECT min(device_id) FROM {t}) UNION ALL"
    " SELECT (SELECT min(device_id) FROM {t} WHERE device_id > d.id) FROM d WHERE d.id IS NOT NULL)"
)
# Parameters: a cut-off; a row limit. CROSS JOIN keeps the devices as the outer loop (the index's prefix).
_PER_DEVICE = (
    "DELETE FROM {t} WHERE {key} IN (" + _DEVICES + " SELECT {rkey} FROM d CROSS JOIN {t} AS r"
    " WHERE r.device_id = d.id AND r.{time} < ?{also} LIMIT ?)"
)
_ROLLUP_KEY = {"key": "(device_id, bucket, metric)", "rkey": "r.device_id, r.bucket, r.metric", "time": "bucket",
               "also": ""}
# readings' ids are max(id) + 1 and a block hides its device-hour's rows up to its `through` (compaction.py):
# were the newest row deleted, the next reading could take an id a block covers (never read) or one the rollups'
# watermark passed (never folded). So the newest row stays, whatever its age, until a newer one comes (compaction
# never moves it either), and max(id) never goes down.
_ROLLED_UP = f" AND r.id <= ({WATERMARK}) AND r.id < (SELECT max(id) FROM readings)"
EXPIRE: dict[str, str] = {
    "readings": _PER_DEVICE.format(t="readings", key="id", rkey="r.id", time="ts", also=_ROLLED_UP),
    "rollup_hourly": _PER_DEVICE.format(t="rollup_hourly", **_ROLLUP_KEY),
    "rollup_daily": _PER_DEVICE.format(t="rollup_daily", **_ROLLUP_KEY),
    "events": "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ? ORDER BY ts LIMIT ?)",
    "quarantine": "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE received_at < ?"
                  " ORDER BY received_at LIMIT ?)",
    "command_log": "DELETE FROM command_log WHERE rowid IN (SELECT rowid FROM command_log WHERE created_at < ?"
                   " AND status NOT IN ('pending', 'sent') ORDER BY created_at LIMIT ?)",
    "schedule_runs": "DELETE FROM schedule_runs WHERE id IN (SELECT id FROM schedule_runs WHERE at < ?"
                     " ORDER BY at LIMIT ?)",
    "rpc_log": "DELETE FROM rpc_log WHERE rowid IN (SELECT rowid FROM rpc_log WHERE at < ? ORDER BY at LIMIT ?)",
}
OLDEST_READING = _DEVICES.format(t="readings") + (
    " SELECT min((SELECT min(ts) FROM readings WHERE device_id = d.id)) FROM d WHERE d.id IS NOT NULL"
)
# Compacted readings (store/compaction.py): whole blocks before a cut-off (parameters: the last hour start
# wholly before it; a row limit), and the blocks of one hour (the one that straddles a cut-off).
_BLOCKS_BEFORE = _DEVICES.format(t="reading_hours") + (
    " SELECT r.rowid, r.count FROM d CROSS JOIN reading_hours AS r WHERE r.device_id = d.id AND r.hour <= ? LIMIT ?"
)
_BLOCKS_OF_HOUR = _DEVICES.format(t="reading_hours") + (
    " SELECT r.rowid, r.data FROM d CROSS JOIN reading_hours AS r WHERE r.device_id = d.id AND r.hour = ?"
)
OLDEST_BLOCK = _DEVICES.format(t="reading_hours") + (
    " SELECT min((SELECT min(hour) FROM reading_hours WHERE device_id = d.id)) FROM d WHERE d.id IS NOT NULL"
)
SIZE_CAP_SLICE_S = 3600.0  # the size cap deletes the oldest hour of readings first, then the next


def _pragma(db: sqlite3.Connection, name: str) -> int:
    row = db.execute(f"PRAGMA {name}").fetchone()
    return int(row[0]) if row else 0


def used_bytes(db: sqlite3.Connection) -> int:
    """Bytes of the database's pages in use (its file size less its free pages)."""
    return (_pragma(db, "page_count") - _pragma(db, "freelist_count")) * _pragma(db, "page_size")


def _delete(db: sqlite3.Connection, sql: str, cutoff: float, limit: int) -> int:
    db.execute("BEGIN")
    try:
        deleted = db.execute(sql, (cutoff, limit)).rowcount
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return max(deleted, 0)


def expire(db: sqlite3.Connection, table: str, cutoff: float, limit: int) -> int:
    if table == "readings":
        return expire_readings(db, cutoff, limit)
    return _delete(db, EXPIRE[table], cutoff, limit)


def expire_readings(db: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Readings older than the cut-off, rows and compacted: whole blocks first (up to about `limit` readings),
    then rows, then the readings before it in the blocks of the hour it cuts (rewritten). How many readings."""
    db.execute("BEGIN")
    try:
        deleted = _expire_blocks(db, cutoff, limit)
        if not deleted:
            deleted = max(db.execute(EXPIRE["readings"], (cutoff, limit)).rowcount, 0)
        if not deleted and cutoff != hour_of(cutoff):
            deleted = _trim_blocks(db, cutoff)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return deleted


def _expire_blocks(db: sqlite3.Connection, cutoff: float, limit: int) -> int:
    taken: list[tuple[int]] = []
    readings = 0
    for rowid, count in db.execute(_BLOCKS_BEFORE, (cutoff - HOUR, limit)).fetchall():  # hour + HOUR <= cutoff
        if taken and readings + count > limit:
            break
        taken.append((rowid,))
        readings += int(count)
    db.executemany("DELETE FROM reading_hours WHERE rowid = ?", taken)
    return readings


def _trim_blocks(db: sqlite3.Connection, cutoff: float) -> int:
    dropped = 0
    for rowid, data in db.execute(_BLOCKS_OF_HOUR, (hour_of(cutoff),)).fetchall():
        entries = decode(data)
        kept = [e for e in entries if e[0] >= cutoff]
        if len(kept) == len(entries):
            continue
        dropped += len(entries) - len(kept)
        if kept:
            db.execute("UPDATE reading_hours SET count = ?, data = ? WHERE rowid = ?", (len(kept), encode(kept), rowid))
        else:
            db.execute("DELETE FROM reading_hours WHERE rowid = ?", (rowid,))
    return dropped


def size_cap(db: sqlite3.Connection, cap_bytes: int, limit: int) -> int:
    if used_bytes(db) <= cap_bytes:
        return 0
    oldest = [row[0] for row in (db.execute(OLDEST_READING).fetchone(), db.execute(OLDEST_BLOCK).fetchone())
              if row is not None and row[0] is not None]
    if not oldest:
        return 0  # no readings left to give up (or none rolled up yet): what fills the database is something else
    return expire_readings(db, float(min(oldest)) + SIZE_CAP_SLICE_S, limit)


def reclaim(db: sqlite3.Connection, keep_bytes: int, limit: int) -> int:
    if _pragma(db, "auto_vacuum") != 2:  # incremental
        return 0
    free = start = _pragma(db, "freelist_count")
    target = free - min(limit, free - keep_bytes // _pragma(db, "page_size"))
    if target >= free:
        return 0
    db.execute("BEGIN")
    try:
        # Each execute() of this pragma hands back one page through Python's sqlite3 (it steps a statement that
        # returns no rows once), so it repeats until the free list is down to the target, in one transaction.
        while free > target:
            db.execute(f"PRAGMA incremental_vacuum({free - target})")
            now_free = _pragma(db, "freelist_count")
            if now_free >= free:
                break  # nothing more to hand back (never seen; guards the loop)
            free = now_free
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return start - free


def _plan(step: LifecycleStep, db: sqlite3.Connection) -> int:
    step.found[:] = plan_wave(db, step.cutoff)
    return max(0, len(step.found) - 1)  # device-hours


def _compact(step: LifecycleStep, db: sqlite3.Connection) -> int:
    moved, taken = compact_hours(db, step.found, step.bytes, step.limit)
    step.found[:] = [taken]
    return moved


def _drop(step: LifecycleStep, db: sqlite3.Connection) -> int:
    deleted, last = drop_covered(db, int(step.cutoff), step.limit)
    step.found[:] = [last]
    return deleted


COMPACTION: dict[str, Callable[[LifecycleStep, sqlite3.Connection], int]] = {
    "compact_plan": _plan, "compact": _compact, "drop_covered": _drop}


class LifecycleJob:
    """One LifecycleStep (a planner.Job): its result or error goes to the step's `done`."""

    __slots__ = ("step",)

    def __init__(self, step: LifecycleStep) -> None:
        self.step = step

    async def __call__(self, conn: aiosqlite.Connection, context: JobContext) -> None:
        step = self.step
        run: Callable[[sqlite3.Connection], int]
        if step.action in COMPACTION:
            run = partial(COMPACTION[step.action], step)
        elif step.action == "rollup":
            run = partial(catch_up, limit=step.limit, through=int(step.cutoff))
        elif step.action == "newest":
            run = newest_id
        elif step.action == "expire" and step.table in EXPIRE:
            run = partial(expire, table=step.table, cutoff=step.cutoff, limit=step.limit)
        elif step.action == "size_cap":
            run = partial(size_cap, cap_bytes=step.bytes, limit=step.limit)
        elif step.action == "reclaim":
            run = partial(reclaim, keep_bytes=step.bytes, limit=step.limit)
        else:
            _finish(step, error=ValueError(f"unknown retention step {step.action!r} of {step.table!r}"))
            return
        try:
            removed, took = await aiosqlite_access.on_worker_thread(conn, _timed, run,
                                                                    aiosqlite_access.raw_connection(conn))
        except Exception as exc:  # the database's refusal, or a block that does not decode (ValueError, zlib.error)
            context.metrics.inc("gateway_lifecycle_errors_total", 1, "failed data lifecycle steps")
            log.error("lifecycle.step_failed", action=step.action, table=step.table,
                      error=f"{type(exc).__name__}: {exc}")
            _finish(step, error=exc)
            return
        _finish(step, removed=removed, took=took)


def _timed(run: Callable[[sqlite3.Connection], int], db: sqlite3.Connection) -> tuple[int, float]:
    """The step's result and how long it held the writer's connection (not counting its wait in the queue)."""
    started = time.perf_counter()
    removed = run(db)
    return removed, time.perf_counter() - started


def _finish(step: LifecycleStep, *, removed: int = 0, took: float = 0.0, error: BaseException | None = None) -> None:
    if step.done.done():  # the caller gave up waiting (shutdown)
        return
    if error is not None:
        step.done.set_exception(error)
    else:
        step.done.set_result((removed, took))
