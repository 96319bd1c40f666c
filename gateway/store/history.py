"""History reads that choose raw readings, hourly or daily rollups by range: statistics and bucketed series.
Raw readings are read in both forms, rows and compacted device-hours (store/compaction.py).

`resolution`:
  * "auto" (default): exact. The range is cut into whole days (daily rollups), whole hours (hourly rollups)
    and the partial hours at its ends (raw readings), so the answer equals the raw computation over the same
    range (avg up to float rounding) at the cost of a few rows per day. A range end older than the raw window
    (`raw_since`) is widened to its whole hour, one older than the hourly window (`hourly_since`) to its whole
    day: the raw rows there are gone. The answer's `from`/`to` say what was covered.
  * "raw": readings only (exact within the raw window, nothing older);
  * "hour" / "day": rollups only, the range widened to the whole buckets it touches (fastest; coarse ends).
A series' points are buckets of `step` seconds aligned to the epoch (UTC); rollups serve a step that is a
whole number of hours (days), raw readings any other step. Ranges are inclusive at both ends, on the
reading's own time; ``None`` leaves an end open.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiosqlite

from gateway.settings_retention import RetentionSection
from gateway.store import aiosqlite_access
from gateway.store.compaction import blocks_in, entries_in
from gateway.store.raw_readings import in_read_transaction
from gateway.store.read_queries import open_reader
from gateway.store.reading_blocks import Entry
from gateway.store.rollups import DAY, HOUR, READINGS_KEY, TABLES, WATERMARK

Resolution = Literal["auto", "raw", "hour", "day"]
AUTO_HOURS_SPAN_S = 7 * 86400.0  # bucketed history: up to a week in hours, beyond in days
RESOLUTIONS: tuple[str, ...] = ("auto", "raw", "hour", "day")
_NUMERIC = "m.type IN ('integer', 'real')"
_INF = math.inf

# An aggregate being merged: [min, max, sum, count, last_ts, last]
Agg = list[Any]


@dataclass(frozen=True, slots=True)
class Piece:
    """One part of a range: readings with start <= ts < end (<= end when `closed`), or buckets start <= b < end."""

    source: str  # "raw" | "hour" | "day"
    start: float
    end: float
    closed: bool = False


@dataclass(frozen=True, slots=True)
class Windows:
    """Where the raw readings and the hourly rollups still reach (retention's cut-offs; None: no limit)."""

    raw_since: float | None = None
    hourly_since: float | None = None

    @classmethod
    def of(cls, policy: RetentionSection, now: float) -> Windows:
        return cls(now - policy.readings_days * 86400.0, now - policy.rollup_hourly_days * 86400.0)


def _floor(t: float, width: int) -> float:
    """The start of the bucket that holds t (t itself when infinite)."""
    if math.isinf(t):
        return t
    q = math.floor(t / width)
    if q * width > t:  # the division rounded up across a boundary
        q -= 1
    elif (q + 1) * width <= t:
        q += 1
    return float(q * width)


def _ceil(t: float, width: int) -> float:
    if math.isinf(t):
        return t
    f = _floor(t, width)
    return f if f == t else f + width


def widen(lo: float, hi: float, resolution: str, windows: Windows) -> tuple[float, float]:
    """The range actually covered: rollup-only resolutions, and auto's ends beyond the raw (hourly) window, grow
    to whole buckets."""
    if resolution in ("hour", "day"):
        width = HOUR if resolution == "hour" else DAY
        return _floor(lo, width), (hi if math.isinf(hi) else _floor(hi, width) + width)
    if resolution == "auto":
        for since, width in ((windows.raw_since, HOUR), (windows.hourly_since, DAY)):
            if since is None:
                continue
            if lo < since:
                lo = _floor(lo, width)
            if hi < since and not math.isinf(hi):
                hi = _floor(hi, width) + width
    return lo, hi


def pieces(lo: float, hi: float, resolution: str, step: int | None = None) -> list[Piece]:
    """Cut [lo, hi] into pieces by source. `step`: a series' bucket width (None: one aggregate over all)."""
    if resolution == "raw":
        return [Piece("raw", lo, hi, True)]
    if resolution in ("hour", "day"):
        return [Piece(resolution, lo, hi)]  # widen() made the ends whole buckets
    use_hours = step is None or step % HOUR == 0
    use_days = step is None or step % DAY == 0
    if not use_hours:
        return [Piece("raw", lo, hi, True)]
    # Whole hours b (lo <= b and b + HOUR <= hi) come from rollups; the ends from readings.
    first, end = _ceil(lo, HOUR), _floor(hi, HOUR)
    if first >= end:
        return [Piece("raw", lo, hi, True)]
    out = [Piece("raw", lo, first)] if lo < first else []
    day_first, day_end = _ceil(first, DAY), _floor(end, DAY)
    if use_days and day_first < day_end:
        out += [Piece("hour", first, day_first), Piece("day", day_first, day_end), Piece("hour", day_end, end)]
    else:
        out.append(Piece("hour", first, end))
    if not math.isinf(hi):
        out.append(Piece("raw", end, hi, True))
    return [p for p in out if p.start < p.end or p.closed]


def _raw_range(piece: Piece) -> tuple[str, tuple[float, float]]:
    return ("r.ts >= ? AND r.ts <= ?" if piece.closed else "r.ts >= ? AND r.ts < ?"), (piece.start, piece.end)


def _merge(into: dict[Any, Agg], key: Any, agg: Agg) -> None:
    have = into.get(key)
    if have is None:
        into[key] = list(agg)
        return
    if agg[0] < have[0]:
        have[0] = agg[0]
    if agg[1] > have[1]:
        have[1] = agg[1]
    have[2] += agg[2]
    have[3] += agg[3]
    if agg[4] is not None and (have[4] is None or agg[4] >= have[4]):
        have[4], have[5] = agg[4], agg[5]


def _width(source: str) -> int:
    return HOUR if source == "hour" else DAY


def _fresh(db: sqlite3.Connection, device: str, parts: list[Piece]) -> list[tuple[float, dict[str, Any]]]:
    """The device's readings not folded into the rollups yet that fall in the rollup pieces `parts` (few: the
    catch-up runs every minute). `+device_id` makes SQLite walk ids from the watermark, not the device index."""
    if not parts:
        return []
    sql = f"SELECT r.ts, r.metrics FROM readings AS r WHERE r.id > ({WATERMARK}) AND +r.device_id = ? ORDER BY r.id"
    return [(ts, json.loads(text)) for ts, text in db.execute(sql, (device,))
            if any(p.start <= ts < p.end for p in parts)]


def _numeric(value: Any) -> bool:
    return value.__class__ is int or value.__class__ is float


def _merge_numbers(per_metric: dict[str, Agg], metrics: dict[str, Any]) -> None:
    for name, value in metrics.items():
        if _numeric(value):
            _merge(per_metric, name, [value, value, value, 1, None, None])


def _compacted(db: sqlite3.Connection, device: str, piece: Piece) -> list[Entry]:
    """A raw piece's compacted readings (store/compaction.py), oldest first: a piece is the partial hours at a
    range's ends (or a raw range), a block or two."""
    return entries_in(blocks_in(db, device, piece.start, piece.end), piece.start, piece.end, piece.closed)


def statistics_now(db: sqlite3.Connection, device: str, lo: float, hi: float, resolution: str = "auto",
                   windows: Windows = Windows()) -> dict[str, Any]:
    """``{from, to, resolution, readings, metrics: {name: {min, max, avg, count}}}`` (numeric metrics only)."""
    lo, hi = widen(lo, hi, resolution, windows)
    per_metric: dict[str, Agg] = {}
    readings = 0

    def read() -> None:
        nonlocal readings
        parts = pieces(lo, hi, resolution)
        for piece in parts:
            if piece.source == "raw":
                where, bounds = _raw_range(piece)
                row = db.execute(f"SELECT count(*) FROM raw_rows AS r WHERE r.device_id = ? AND {where}",
                                 (device, *bounds)).fetchone()
                readings += int(row[0]) if row else 0
                for _, _, metrics, _ in _compacted(db, device, piece):
                    readings += 1
                    _merge_numbers(per_metric, metrics)
                sql = (f"SELECT m.key, min(m.value), max(m.value), total(m.value), count(*) FROM raw_rows AS r,"
                       f" json_each(r.metrics) AS m WHERE r.device_id = ? AND {where} AND {_NUMERIC} GROUP BY m.key")
            else:
                sql = (f"SELECT metric, min(min), max(max), total(sum), sum(count) FROM {TABLES[_width(piece.source)]}"
                       " WHERE device_id = ? AND bucket >= ? AND bucket < ? GROUP BY metric")
                bounds = (piece.start, piece.end)
            for key, low, high, total, count in db.execute(sql, (device, *bounds)):
                if key == READINGS_KEY and piece.source != "raw":
                    readings += int(count)
                else:
                    _merge(per_metric, str(key), [low, high, total, int(count), None, None])
        for _, metrics in _fresh(db, device, [p for p in parts if p.source != "raw"]):
            readings += 1
            _merge_numbers(per_metric, metrics)

    in_read_transaction(db, read)  # the rollups, their watermark, the raw rows
    metrics = {name: {"min": a[0], "max": a[1], "avg": a[2] / a[3], "count": a[3]}
               for name, a in sorted(per_metric.items())}
    return {"from": lo, "to": hi, "resolution": resolution, "readings": readings, "metrics": metrics}


def series_now(db: sqlite3.Connection, device: str, metric: str, lo: float, hi: float, step: int,
               resolution: str = "auto", windows: Windows = Windows()) -> dict[str, Any]:
    """``{from, to, step, resolution, points: [{ts, min, max, avg, count, last}]}``: one point per `step`
    bucket (epoch-aligned) that holds data, oldest first."""
    if resolution in ("hour", "day") and step % _width(resolution):
        raise ValueError(f"step must be a whole number of {resolution}s for resolution {resolution}")
    lo, hi = widen(lo, hi, resolution, windows)
    buckets: dict[int, Agg] = {}

    def add(ts: float, value: Any) -> None:
        second = math.floor(ts)
        _merge(buckets, second - second % step, [value, value, value, 1, ts, value])

    def read() -> None:
        parts = pieces(lo, hi, resolution, step)
        for piece in parts:
            if piece.source == "raw":
                where, bounds = _raw_range(piece)
                for ts, _, metrics, _ in _compacted(db, device, piece):  # stored before the piece's rows
                    value = metrics.get(metric)
                    if _numeric(value):
                        add(ts, value)
                sql = (f"SELECT r.ts, m.value FROM raw_rows AS r, json_each(r.metrics) AS m"
                       f" WHERE r.device_id = ? AND {where} AND m.key = ? AND {_NUMERIC} ORDER BY r.id")
                for ts, value in db.execute(sql, (device, *bounds, metric)):
                    add(ts, value)
                continue
            sql = (f"SELECT bucket, min, max, sum, count, last_ts, last FROM {TABLES[_width(piece.source)]}"
                   " WHERE device_id = ? AND bucket >= ? AND bucket < ? AND metric = ?")
            for bucket, low, high, total, count, last_ts, last in db.execute(sql, (device, piece.start, piece.end,
                                                                                      metric)):
                _merge(buckets, bucket - bucket % step, [low, high, total, count, last_ts, last])
        for ts, metrics in _fresh(db, device, [p for p in parts if p.source != "raw"]):
            value = metrics.get(metric)
            if _numeric(value):
                add(ts, value)

    in_read_transaction(db, read)  # the rollups, their watermark, the raw rows
    points = [{"ts": b, "min": a[0], "max": a[1], "avg": a[2] / a[3], "count": a[3], "last": a[5]}
              for b, a in sorted(buckets.items())]
    return {"from": lo, "to": hi, "step": step, "resolution": resolution, "points": points}


def buckets_now(db: sqlite3.Connection, device: str, lo: float, hi: float, resolution: str, limit: int,
                windows: Windows = Windows()) -> dict[str, Any]:
    """History as buckets of every metric, newest first (`resolution` "hour" or "day", or "auto": hours for a
    range of up to AUTO_HOURS_SPAN, days beyond): ``{from, to, resolution, data: [{ts, readings, metrics:
    {name: {min, max, avg, count, last}}}]}``, at most `limit` buckets."""
    if resolution == "auto":
        resolution = "hour" if hi - lo <= AUTO_HOURS_SPAN_S else "day"
    width = _width(resolution)
    lo, hi = widen(lo, hi, resolution, windows)
    per_bucket: dict[int, dict[str, Agg]] = {}

    def add(bucket: int, name: str, agg: Agg) -> None:
        _merge(per_bucket.setdefault(bucket, {}), name, agg)

    def read() -> None:
        sql = (f"SELECT bucket, metric, min, max, sum, count, last_ts, last FROM {TABLES[width]}"
               " WHERE device_id = ? AND bucket >= ? AND bucket < ?")
        for bucket, name, low, high, total, count, last_ts, last in db.execute(sql, (device, lo, hi)):
            add(bucket, name, [low, high, total, count, last_ts, last])
        for ts, metrics in _fresh(db, device, [Piece(resolution, lo, hi)]):
            second = math.floor(ts)
            bucket = second - second % width
            add(bucket, READINGS_KEY, [0, 0, 0.0, 1, ts, 0])
            for name, value in metrics.items():
                if _numeric(value):
                    add(bucket, name, [value, value, value, 1, ts, value])

    in_read_transaction(db, read)  # the rollups, their watermark, the raw rows
    data = []
    for bucket in sorted(per_bucket, reverse=True)[:limit]:
        aggs = per_bucket[bucket]
        count = aggs.pop(READINGS_KEY, [0, 0, 0.0, 0, None, None])[3]
        data.append({"ts": bucket, "readings": count, "metrics": {
            name: {"min": a[0], "max": a[1], "avg": a[2] / a[3], "count": a[3], "last": a[5]}
            for name, a in sorted(aggs.items())}})
    return {"from": lo, "to": hi, "resolution": resolution, "data": data}


async def buckets(conn: aiosqlite.Connection, device: str, lo: float, hi: float, resolution: str, limit: int,
                  windows: Windows = Windows()) -> dict[str, Any]:
    """buckets_now on the connection's worker thread."""
    return await aiosqlite_access.on_worker_thread(conn, buckets_now, aiosqlite_access.raw_connection(conn),
                                                   device, lo, hi, resolution, limit, windows)


async def statistics(conn: aiosqlite.Connection, device: str, lo: float, hi: float, resolution: str = "auto",
                     windows: Windows = Windows()) -> dict[str, Any]:
    """statistics_now on the connection's worker thread (one call: its reads share one snapshot)."""
    return await aiosqlite_access.on_worker_thread(conn, statistics_now, aiosqlite_access.raw_connection(conn),
                                                   device, lo, hi, resolution, windows)


async def series(conn: aiosqlite.Connection, device: str, metric: str, lo: float, hi: float, step: int,
                 resolution: str = "auto", windows: Windows = Windows()) -> dict[str, Any]:
    """series_now on the connection's worker thread."""
    return await aiosqlite_access.on_worker_thread(conn, series_now, aiosqlite_access.raw_connection(conn),
                                                   device, metric, lo, hi, step, resolution, windows)


class LazyReader:
    """A read-only connection opened on first use (the cloud's history calls are rare), closed at shutdown."""

    def __init__(self, path: Path) -> None:
        self._path = path.absolute()
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def conn(self) -> aiosqlite.Connection:
        async with self._lock:
            if self._conn is None:
                self._conn = await open_reader(self._path)
            return self._conn

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()
