"""Read queries behind the local REST API and the panel: readings, statistics, chart series, the command
audit log, schedule runs, quarantine.

Each takes an open connection (the API's own read-only one: WAL lets it read beside the writer) and
returns plain JSON-ready dicts in the API's camelCase form. Ranges are inclusive at both ends and use
the reading's own time ``ts`` (epoch seconds); ``None`` leaves that end open. Newest first everywhere but
in the chart series (oldest first, as a chart draws them).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.store import raw_readings

SCHEDULE_RUNS_LIMIT = 50

_OPEN_START = float("-inf")
_OPEN_END = float("inf")


def _range(start: float | None, end: float | None) -> tuple[float, float]:
    # SQLite compares REAL with +-inf correctly, so one statement serves open and closed ranges.
    return (_OPEN_START if start is None else start, _OPEN_END if end is None else end)


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


async def readings(
    conn: aiosqlite.Connection, device: str, *, start: float | None = None, end: float | None = None, limit: int
) -> list[dict[str, Any]]:
    """``[{ts, receivedAt, metrics}]`` of one device within the range, newest first, at most ``limit``."""
    rows = await raw_readings.snapshot(conn, raw_readings.newest, device, *_range(start, end), limit)
    return [{"ts": ts, "receivedAt": received, "metrics": metrics} for ts, received, metrics in rows]


async def latest_reading(conn: aiosqlite.Connection, device: str) -> dict[str, Any] | None:
    """The device's newest reading by its own time, or None when it never sent one."""
    rows = await readings(conn, device, limit=1)
    return rows[0] if rows else None


async def metric_statistics(
    conn: aiosqlite.Connection, device: str, *, start: float | None = None, end: float | None = None
) -> dict[str, Any]:
    """``{readings, metrics: {name: {min, max, avg, count}}}`` over the range.

    Numeric metrics only: json_each reports JSON true/false as types 'true'/'false', so booleans (powerOn)
    drop out, as do strings. ``count`` is per metric: a metric missing from some readings counts fewer.
    """
    return await raw_readings.snapshot(conn, metric_statistics_now, device, *_range(start, end))


def metric_statistics_now(db: sqlite3.Connection, device: str, lo: float, hi: float) -> dict[str, Any]:
    """metric_statistics on a sqlite3 connection, in the caller's snapshot."""
    row = db.execute("SELECT count(*) FROM raw_rows WHERE device_id = ? AND ts >= ? AND ts <= ?",
                     (device, lo, hi)).fetchone()
    total = int(row[0]) if row else 0
    sql = (
        "SELECT m.key, min(m.value), max(m.value), total(m.value), count(*)"
        " FROM raw_rows AS r, json_each(r.metrics) AS m"
        " WHERE r.device_id = ? AND r.ts >= ? AND r.ts <= ? AND m.type IN ('integer', 'real')"
        " GROUP BY m.key"
    )
    aggs: dict[str, list[Any]] = {}  # name -> [min, max, sum, count]
    for key, low, high, added, count in db.execute(sql, (device, lo, hi)):
        aggs[str(key)] = [low, high, added, int(count)]
    for _, _, values, _ in raw_readings.compacted_entries(db, device, lo, hi):
        total += 1
        for name, value in values.items():
            if value.__class__ is int or value.__class__ is float:  # numbers; booleans drop out as above
                agg = aggs.get(name)
                if agg is None:
                    aggs[name] = [value, value, value, 1]
                else:
                    agg[0], agg[1] = min(agg[0], value), max(agg[1], value)
                    agg[2] += value
                    agg[3] += 1
    metrics = {name: {"min": a[0], "max": a[1], "avg": a[2] / a[3], "count": a[3]} for name, a in sorted(aggs.items())}
    return {"readings": total, "metrics": metrics}


_COMMAND_COLUMNS = (
    "command_id, device_id, action, value, source, status, attempts, created_at, sent_at, last_sent_at,"
    " finished_at, error, state, note, cause, attempt_log"
)


def _command(row: Any) -> dict[str, Any]:
    (cid, dev, action, value, source, status, attempts, created, sent, last_sent, finished, error, state, note,
     cause, attempt_log) = row
    return {
        "commandId": cid, "device": dev, "action": action, "value": value, "source": source, "cause": cause,
        "status": status, "attempts": attempts, "createdAt": created, "sentAt": sent,
        "lastSentAt": last_sent, "finishedAt": finished, "error": error, "state": _json(state), "note": note,
        "attemptLog": _json(attempt_log) or [],
    }


async def command_log(conn: aiosqlite.Connection, device: str, *, limit: int) -> list[dict[str, Any]]:
    """The device's audit log, newest first, in the form of ``gateway.web.views.command_json``."""
    sql = (
        f"SELECT {_COMMAND_COLUMNS} FROM command_log WHERE device_id = ?"
        " ORDER BY created_at DESC, rowid DESC LIMIT ?"
    )
    async with conn.execute(sql, (device, limit)) as cur:
        rows = await cur.fetchall()
    return [_command(row) for row in rows]


async def command(conn: aiosqlite.Connection, command_id: str) -> dict[str, Any] | None:
    """One command's audit record by its id (None: no such command), in the same form."""
    async with conn.execute(f"SELECT {_COMMAND_COLUMNS} FROM command_log WHERE command_id = ?", (command_id,)) as cur:
        row = await cur.fetchone()
    return _command(row) if row is not None else None


async def schedule_runs(
    conn: aiosqlite.Connection, schedule_id: int, *, limit: int = SCHEDULE_RUNS_LIMIT
) -> list[dict[str, Any]]:
    """Execution history of one schedule (start and end of each window), newest first."""
    sql = (
        "SELECT id, schedule_id, device_id, phase, window_start, window_end, fan_speed, at FROM schedule_runs"
        " WHERE schedule_id = ? ORDER BY at DESC, id DESC LIMIT ?"
    )
    async with conn.execute(sql, (schedule_id, limit)) as cur:
        rows = await cur.fetchall()
    return [
        {"id": rid, "scheduleId": sid, "device": dev, "phase": phase, "windowStart": w_start,
         "windowEnd": w_end, "fanSpeed": fan, "at": at}
        for rid, sid, dev, phase, w_start, w_end, fan, at in rows
    ]


async def metric_series(
    conn: aiosqlite.Connection, device: str, *, start: float, end: float, bucket_s: float, metrics: tuple[str, ...]
) -> dict[str, list[float | None]]:
    """What a chart draws: per time bucket (oldest first) its start ``ts`` and the average of each metric.

    Columns, not rows (``{"ts": [...], "pm25": [...]}``): a week at one reading per 10 s is 60,480 rows,
    reduced here to a few hundred points. A metric a bucket lacks is None (a gap in the line).
    """
    return await raw_readings.snapshot(conn, metric_series_now, device, start, end, bucket_s, metrics)


def metric_series_now(db: sqlite3.Connection, device: str, start: float, end: float, bucket_s: float,
            metrics: tuple[str, ...]) -> dict[str, list[float | None]]:
    """metric_series on a sqlite3 connection, in the caller's snapshot."""
    sums = ", ".join("total(json_extract(metrics, ?)), count(json_extract(metrics, ?))" for _ in metrics)
    sql = (
        f"SELECT CAST(ts / ? AS INTEGER) AS bucket, {sums} FROM raw_rows"
        " WHERE device_id = ? AND ts >= ? AND ts <= ? GROUP BY bucket"
    )
    # bucket -> [sum, count] per metric, rows and compacted readings (booleans count as 1/0, as json_extract's)
    buckets: dict[int, list[float]] = {}
    params = (bucket_s, *(f"$.{name}" for name in metrics for _ in range(2)), device, start, end)
    for bucket, *values in db.execute(sql, params):
        buckets[int(bucket)] = [float(v) for v in values]
    for ts, _, reading, _ in raw_readings.compacted_entries(db, device, start, end):
        into = buckets.setdefault(int(ts / bucket_s), [0.0] * (2 * len(metrics)))
        for k, name in enumerate(metrics):
            value = reading.get(name)
            if value is not None and value.__class__ is not str:
                into[2 * k] += value
                into[2 * k + 1] += 1
    series: dict[str, list[float | None]] = {"ts": [], **{name: [] for name in metrics}}
    columns = [series[name] for name in metrics]
    for bucket in sorted(buckets):
        added = buckets[bucket]
        series["ts"].append(float(bucket) * bucket_s)
        for k, column in enumerate(columns):
            count = added[2 * k + 1]
            column.append(round(added[2 * k] / count, 3) if count else None)
    return series


async def latest_quarantine(conn: aiosqlite.Connection, *, limit: int) -> list[dict[str, Any]]:
    """The newest quarantined messages with their reasons (no payloads), newest first."""
    sql = (
        "SELECT id, received_at, client_id, device_id, topic, reason, coalesce(size, length(payload))"
        " FROM quarantine ORDER BY received_at DESC, id DESC LIMIT ?"
    )
    async with conn.execute(sql, (limit,)) as cur:
        rows = await cur.fetchall()
    return [
        {"id": qid, "receivedAt": received, "clientId": client, "device": device, "topic": topic, "reason": reason,
         "size": size}
        for qid, received, client, device, topic, reason, size in rows
    ]


async def open_reader(path: Path) -> aiosqlite.Connection:
    """A read-only connection to an existing database (``mode=rw`` so a wrong path fails, not creates).

    Not ``mode=ro``: a read-only opener of a WAL database cannot create the shared-memory index when it is
    the first, so it would fail whenever the writer is briefly closed. ``query_only`` guards writes instead.
    """
    if not path.is_absolute():
        raise ValueError(f"{path}: an absolute path is required (a URI cannot carry a relative one)")
    uri = path.as_uri() + "?mode=rw"  # as_uri() percent-encodes '?', '#' and '%' in the path
    conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    try:
        await conn.execute("PRAGMA busy_timeout=5000")
        # query_only: this connection can never write, whatever a future query does by mistake.
        await conn.execute("PRAGMA query_only=ON")
        await conn.execute("PRAGMA cache_size=-512")  # 512 KiB (default 2 MB): RSS matters on a Pi
        async with conn.execute("PRAGMA journal_mode") as cur:
            row = await cur.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            # Without WAL our reads would block the writer; the writer sets WAL when it opens the file.
            raise RuntimeError(f"{path}: database is not in WAL mode (open the store writer first)")
    except BaseException:
        await conn.close()
        raise
    return conn
