"""Raw readings in both of their forms: rows (recent, or not folded into the rollups yet) and compacted
device-hours (store/compaction.py). What reads raw readings (the API's readings, statistics and chart, history's
raw ends, export, the resend memory) goes through here or through compaction's block helpers, so a reading
reads the same before and after its hour was compacted.

Order: by the reading's own time; on equal times in the order stored (a block holds readings stored before any
row of its hour that is still a row).
"""

from __future__ import annotations

import heapq
import json
import sqlite3
from collections.abc import Callable, Generator, Iterable, Iterator
from functools import partial
from typing import Any, TypeVar

import aiosqlite

from gateway.store import aiosqlite_access
from gateway.store.compaction import blocks_in, entries_in, hour_of, metrics_text, row_entry
from gateway.store.reading_blocks import Entry, decode

_ROWS = ("SELECT ts, received_at, metrics, extra FROM raw_rows WHERE device_id = ? AND ts >= ? AND ts <= ?"
         " ORDER BY ts, id")
T = TypeVar("T")

_BLOCKS_NEWEST = ("SELECT data FROM reading_hours WHERE device_id = ? AND hour >= ? AND hour <= ?"
                  " ORDER BY hour DESC")


def _first_hour(lo: float) -> float:
    return lo if lo == float("-inf") else float(hour_of(lo))


def _ts(entry: Entry) -> float:
    return entry[0]


def device_entries(db: sqlite3.Connection, device: str, lo: float, hi: float) -> list[Entry]:
    """The device's readings with lo <= ts <= hi, oldest first (rows and blocks in one snapshot)."""

    def read() -> list[Entry]:
        rows = [row_entry(*row) for row in db.execute(_ROWS, (device, lo, hi))]
        return list(heapq.merge(entries_in(blocks_in(db, device, lo, hi), lo, hi), rows, key=_ts))

    return read() if db.in_transaction else in_read_transaction(db, read)


def in_read_transaction(db: sqlite3.Connection, read: Callable[[], T]) -> T:
    """`read()` with all its statements in one snapshot: a compaction step that moves rows into their block
    commits beside a reader, and rows read before it and blocks read after it would hold readings twice."""
    db.execute("BEGIN")
    try:
        return read()
    finally:
        db.execute("COMMIT")


async def snapshot(conn: aiosqlite.Connection, read: Callable[..., T], *args: Any) -> T:
    """`read(db, *args)` on the connection's worker thread, in one snapshot (in_read_transaction)."""
    db = aiosqlite_access.raw_connection(conn)
    return await aiosqlite_access.on_worker_thread(conn, in_read_transaction, db, partial(read, db, *args))


def newest(db: sqlite3.Connection, device: str, lo: float, hi: float,
           limit: int) -> list[tuple[float, float, dict[str, Any]]]:
    """(ts, received_at, metrics) of the device's newest `limit` readings with lo <= ts <= hi, newest first."""
    rows = [(ts, received, json.loads(text)) for ts, received, text in db.execute(
        "SELECT ts, received_at, metrics FROM raw_rows WHERE device_id = ? AND ts >= ? AND ts <= ?"
        " ORDER BY ts DESC, id DESC LIMIT ?", (device, lo, hi, limit))]
    compacted: list[tuple[float, float, dict[str, Any]]] = []
    for (data,) in db.execute(_BLOCKS_NEWEST, (device, _first_hour(lo), hi)):
        # hours newest first: once `limit` are found, older hours cannot be newer
        compacted.extend((ts, rx, m) for ts, rx, m, _ in reversed(decode(data)) if lo <= ts <= hi)
        if len(compacted) >= limit:
            break
    # On equal times a row was stored after the block's readings: it comes first, newest first.
    return list(heapq.merge(rows, compacted, key=lambda r: -r[0]))[:limit]


def compacted_entries(db: sqlite3.Connection, device: str, lo: float, hi: float) -> list[Entry]:
    """The device's compacted readings with lo <= ts <= hi, oldest first (its rows not included)."""
    blocks = [(int(hour), bytes(data)) for hour, data in db.execute(
        "SELECT hour, data FROM reading_hours WHERE device_id = ? AND hour >= ? AND hour <= ? ORDER BY hour",
        (device, _first_hour(lo), hi))]
    return entries_in(blocks, lo, hi)


Row = tuple[str, float, float, str]  # device_id, ts, received_at, metrics (JSON text)


def all_rows(db: sqlite3.Connection, where: str, params: list[Any], block_where: str,
             block_params: list[Any], lo: float, hi: float) -> Generator[Row, None, None]:
    """Readings of many devices as (device, ts, received_at, metrics text), oldest first, streamed: rows by the
    `where` on `raw_rows AS r`, blocks by `block_where` on `reading_hours AS b`, kept when lo <= ts < hi."""
    compacted = has_blocks(db)  # not in a database of an earlier gateway, read where it lies (not migrated)
    rows: Iterable[Row] = db.execute(
        f"SELECT r.device_id, r.ts, r.received_at, r.metrics FROM {'raw_rows' if compacted else 'readings'} AS r"
        f" WHERE {where} ORDER BY r.ts, r.id", params)
    if not compacted:
        yield from rows
        return
    blocks = db.execute(f"SELECT b.hour, b.device_id, b.data FROM reading_hours AS b WHERE {block_where}"
                        " ORDER BY b.hour, b.device_id", block_params)
    yield from heapq.merge(_block_rows(blocks, lo, hi), rows, key=lambda r: r[1])


def has_blocks(db: sqlite3.Connection) -> bool:
    """Whether the database has compacted readings' table (schema 7 on)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'reading_hours'").fetchone() is not None


def _block_rows(blocks: Iterable[tuple[int, str, bytes]], lo: float, hi: float) -> Iterator[Row]:
    """The blocks' readings by time, an hour at a time (a reading is in its own hour's block)."""
    hour: int | None = None
    pending: list[Row] = []
    for block_hour, device, data in blocks:
        if block_hour != hour:
            yield from sorted(pending, key=lambda r: r[1])
            hour, pending = block_hour, []
        pending.extend((device, ts, rx, metrics_text(m)) for ts, rx, m, _ in decode(data) if lo <= ts < hi)
    yield from sorted(pending, key=lambda r: r[1])
