"""Compaction: a closed device-hour of raw readings becomes one reading_hours row (store/reading_blocks.py).

Readings land as rows (a commit per batch, PUBACK after it); a row costs ~160 B with its index, a reading in a
block a few bytes. The rows of one hour lie interleaved by device in id order (25 devices' rows share a 4 KiB
page), so moving one device-hour at a time, rows deleted with it, would rewrite every page of that hour once per
device. Compaction therefore goes an hour (a "wave") at a time, in steps of the data lifecycle
(store/lifecycle.py), each its own short transaction:
  1. plan: the oldest hours (up to a day) before the cut-off that have readings not in a block, and their
     devices;
  2. per device: its readings of that hour into its block (merged with the block a late reading finds), the
     block's `through` = the last row id it holds; those rows are then "covered" and raw reads skip them
     (the raw_rows view), so every reading is read once, as a row or from its block;
  3. covered rows deleted in id order, a chunk of ids per step: each page of the hour is rewritten once.
Exact across crashes and restarts: each step is a transaction, and covered rows left by an interrupted pass
are deleted by the next.

Only readings the rollups already hold (id <= the watermark) are moved, and never the newest row
(movable_through). The outbox keeps its own copy of every telemetry message (its body): compaction never
touches what waits for the cloud. A block keeps its readings by time, then by the order they were stored (the
rows' ids): raw reads of a range get them back in the order the rows gave (store/raw_readings.py).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from gateway.store.reading_blocks import Entry, decode, encode
from gateway.store.rollups import HOUR, watermark

# The start of the hour of readings.ts (floor, below zero too), as the raw_rows view computes it.
_FLOOR_TS = "(CAST(readings.ts AS INTEGER) - (readings.ts < CAST(readings.ts AS INTEGER)))"
_HOUR_OF_TS = f"({_FLOOR_TS} - ({_FLOOR_TS} % 3600 + 3600) % 3600)"
# The distinct device ids of raw readings, one index probe each (as lifecycle_steps' retention finds them).
_DEVICES = (
    "WITH RECURSIVE d(id) AS (SELECT (SELECT min(device_id) FROM readings) UNION ALL"
    " SELECT (SELECT min(device_id) FROM readings WHERE device_id > d.id) FROM d WHERE d.id IS NOT NULL)"
)
# The oldest reading before a cut-off that may move and is in no block yet (parameters: cut-off, through).
_OLDEST = _DEVICES + (
    " SELECT min((SELECT min(ts) FROM raw_rows WHERE device_id = d.id AND ts < ? AND id <= ?)) FROM d"
    " WHERE d.id IS NOT NULL"
)
# The devices with such readings in an hour (parameters: hour start, end, through).
_WAVE_DEVICES = _DEVICES + (
    " SELECT d.id FROM d WHERE d.id IS NOT NULL AND EXISTS (SELECT 1 FROM raw_rows"
    " WHERE device_id = d.id AND ts >= ? AND ts < ? AND id <= ?)"
)
_HOUR_ROWS = ("SELECT id, ts, received_at, metrics, extra FROM raw_rows"
              " WHERE device_id = ? AND ts >= ? AND ts < ? AND id <= ? ORDER BY ts, id")
_BLOCK = "SELECT through, data FROM reading_hours WHERE device_id = ? AND hour = ?"
_PUT_BLOCK = "INSERT OR REPLACE INTO reading_hours (device_id, hour, count, through, data) VALUES (?, ?, ?, ?, ?)"
_WAVE = ("INSERT INTO compaction_wave (id, first, last) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE SET"
         " first = min(first, excluded.first), last = max(last, excluded.last)")
_CHUNK_END = "SELECT max(id) FROM (SELECT id FROM readings WHERE id > ? AND id <= ? ORDER BY id LIMIT ?)"
_DROP_COVERED = (
    "DELETE FROM readings WHERE id > ? AND id <= ? AND id <= (SELECT b.through FROM reading_hours AS b"
    f" WHERE b.device_id = readings.device_id AND b.hour = {_HOUR_OF_TS})"
)


def hour_of(ts: float) -> int:
    """The start of the UTC hour that holds ts (as the rollups bucket it)."""
    return int(ts // HOUR) * HOUR


def row_entry(ts: float, received_at: float, metrics: str, extra: str | None) -> Entry:
    return (ts, received_at, json.loads(metrics), json.loads(extra) if extra else None)


def merged(older: list[Entry], newer: list[Entry]) -> list[Entry]:
    """A block's readings and rows stored after them, by time; on equal times the block's first (a stable sort,
    and the rows come by id)."""
    if not older:
        return newer
    return sorted(older + newer, key=_ts)


def _ts(entry: Entry) -> float:
    return entry[0]


def movable_through(db: sqlite3.Connection) -> int:
    """The last reading id that may leave the readings table: held by the rollups, and never the newest row.
    readings' ids are max(id) + 1: with its newest row gone, the next reading would take an id the rollups'
    watermark has passed and never be folded."""
    newest = db.execute("SELECT max(id) FROM readings").fetchone()
    return min(watermark(db), int(newest[0]) - 1 if newest and newest[0] is not None else 0)


WAVE_HOURS = 24  # hours planned at once (a backlog after an upgrade or an outage goes a day at a time)


def plan_wave(db: sqlite3.Connection, cutoff: float) -> list[Any]:
    """[through, (hour, device)...]: the last id that may move, then the device-hours with readings to move in
    the oldest WAVE_HOURS hours that end by `cutoff` (floored to an hour), hour by hour; [] when there is none."""
    through = movable_through(db)
    end = float(hour_of(cutoff))
    row = db.execute(_OLDEST, (end, through)).fetchone()
    if row is None or row[0] is None:
        return []
    out: list[Any] = [through]
    for hour in range(hour_of(float(row[0])), int(min(end, hour_of(float(row[0])) + WAVE_HOURS * HOUR)), HOUR):
        out += [(hour, str(d)) for (d,) in db.execute(_WAVE_DEVICES, (hour, hour + HOUR, through))]
    return out

def compact_hours(db: sqlite3.Connection, device_hours: list[tuple[int, str]], through: int, limit: int) -> tuple[
        int, int]:
    """Step 2, in one transaction: device-hours in order, as many as about `limit` readings take (one at least):
    each one's rows with id <= through not in its block yet go into the block (they stay as covered rows until
    step 3, their ids noted in compaction_wave). (Readings moved, device-hours done.)"""
    moved = taken = 0
    db.execute("BEGIN IMMEDIATE")
    try:
        for hour, device in device_hours:
            moved += _compact_hour(db, device, hour, through)
            taken += 1
            if moved >= limit:
                break
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return moved, taken


def _compact_hour(db: sqlite3.Connection, device: str, hour: int, through: int) -> int:
    rows = db.execute(_HOUR_ROWS, (device, hour, hour + HOUR, through)).fetchall()
    if rows:
        ids = [int(row[0]) for row in rows]
        first, last = min(ids), max(ids)
        block = db.execute(_BLOCK, (device, hour)).fetchone()
        entries = merged(decode(block[1]) if block else [], [row_entry(*row[1:]) for row in rows])
        db.execute(_PUT_BLOCK, (device, hour, len(entries), max(last, int(block[0]) if block else 0),
                                encode(entries)))
        db.execute(_WAVE, (first, last))
    return len(rows)


def drop_covered(db: sqlite3.Connection, after: int, limit: int) -> tuple[int, int]:
    """Step 3: the covered rows among the next `limit` ids after `after` within the wave's ids (compaction_wave),
    in one transaction; (rows deleted, the last id looked at, or -1 when the wave is done)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        wave = db.execute("SELECT first, last FROM compaction_wave").fetchone()
        if wave is None:
            db.execute("COMMIT")
            return 0, -1
        start, last = max(after, int(wave[0]) - 1), int(wave[1])
        row = db.execute(_CHUNK_END, (start, last, limit)).fetchone()
        end = int(row[0]) if row and row[0] is not None else last
        deleted = db.execute(_DROP_COVERED, (start, end)).rowcount
        if end >= last:
            db.execute("DELETE FROM compaction_wave")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return max(deleted, 0), (-1 if end >= last else end)


def blocks_in(db: sqlite3.Connection, device: str, lo: float, hi: float) -> list[tuple[int, bytes]]:
    """(hour, data) of the device's blocks that may hold readings with lo <= ts <= hi, oldest first."""
    first = float("-inf") if lo == float("-inf") else float(hour_of(lo))
    return [(int(h), bytes(data)) for h, data in db.execute(
        "SELECT hour, data FROM reading_hours WHERE device_id = ? AND hour >= ? AND hour <= ? ORDER BY hour",
        (device, first, hi))]


def entries_in(blocks: list[tuple[int, bytes]], lo: float, hi: float, closed: bool = True) -> list[Entry]:
    """The blocks' readings with lo <= ts <= hi (< hi when not `closed`), oldest first."""
    out: list[Entry] = []
    for _, data in blocks:
        out.extend(e for e in decode(data) if lo <= e[0] and (e[0] <= hi if closed else e[0] < hi))
    return out


def metrics_text(metrics: dict[str, Any]) -> str:
    """A block reading's metrics as the JSON text its row held (the store writer's compact form)."""
    return json.dumps(metrics, separators=(",", ":"), ensure_ascii=False)
