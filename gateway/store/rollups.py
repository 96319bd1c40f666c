"""Hourly and daily rollups of readings: min, max, sum, count and the last value per device, metric and bucket.

Kept off ingest's hot path: folding at commit time (measured) tripled the store writer's CPU per reading (ten
upserts per table per reading). Instead a catch-up step (a LifecycleStep "rollup", run by the store writer
after a batch, store/lifecycle.py paces it) folds the readings after a watermark, in id order, into both
tables and moves the watermark in the same transaction: exact across crashes and restarts, every reading
counted once. A late reading (a device's backlog after an outage) gets a new id, so it is folded too, into
the bucket of its own time. History reads add the few readings past the watermark themselves (history.py),
and retention never deletes a reading the rollups do not hold yet (retention.py).

Buckets are UTC hours and days by the reading's own ``ts``: bucket b holds b <= ts < b + width, b a whole
second count, so these buckets and SQLite's range comparisons agree exactly. Booleans are left out, as the
raw statistics leave them out; the metric '' counts the bucket's readings (a reading may have no number).
"""

from __future__ import annotations

import sqlite3

HOUR = 3600
DAY = 86400
READINGS_KEY = ""  # the pseudo-metric whose count is the bucket's number of readings
TABLES = {HOUR: "rollup_hourly", DAY: "rollup_daily"}

WATERMARK = "SELECT readings_through FROM rollup_state"
_FLOOR_TS = "(CAST(r.ts AS INTEGER) - (r.ts < CAST(r.ts AS INTEGER)))"  # floor(ts), also below zero


def _bucket(width: int) -> str:
    return f"({_FLOOR_TS} - (({_FLOOR_TS} % {width}) + {width}) % {width})"


# A fold's numeric values, staged once for both tables (json_each parsed once), in (metric, device, hour, ts, id)
# order: rowid follows that order, so the greatest rowid of a bucket is its newest value (by ts, then id), for the
# hour as for the day (an hour's readings all come before the next hour's). A table of the writer's connection
# (temp_store=MEMORY), emptied by each fold.
STAGING = "CREATE TEMP TABLE IF NOT EXISTS fold_values (k TEXT, d TEXT, h INTEGER, x, t REAL)"
STAGE = (
    f"INSERT INTO temp.fold_values (k, d, h, x, t) SELECT m.key, r.device_id, {_bucket(HOUR)}, m.value, r.ts"
    " FROM readings AS r, json_each(r.metrics) AS m WHERE r.id > ? AND r.id <= ? AND m.type IN ('integer', 'real')"
    " ORDER BY 1, 2, 3, r.ts, r.id"
)


def _fold_sql(table: str, width: int) -> str:
    """Fold the staged values and the readings with first < id <= last (parameters: first, last) into `table`.
    SQLite evaluates every SET expression against the row as it was, so `last` and `last_ts` compare the same
    old ts."""
    staged_bucket = "h" if width == HOUR else f"(h - ((h % {width}) + {width}) % {width})"
    bucket = _bucket(width)
    return f"""
INSERT INTO {table} (device_id, bucket, metric, min, max, sum, count, last_ts, last)
SELECT * FROM (
    SELECT g.d, g.b, g.k, g.lo, g.hi, g.s, g.n, g.lt, newest.x FROM (
        SELECT k, d, {staged_bucket} AS b, min(x) AS lo, max(x) AS hi, total(x) AS s, count(*) AS n, max(t) AS lt,
               max(rowid) AS newest_row FROM temp.fold_values GROUP BY k, d, {staged_bucket}
    ) AS g JOIN temp.fold_values AS newest ON newest.rowid = g.newest_row
    UNION ALL
    SELECT r.device_id, {bucket}, '', 0, 0, 0.0, count(*), max(r.ts), 0 FROM readings AS r
    WHERE r.id > ? AND r.id <= ? GROUP BY r.device_id, {bucket}
) WHERE true
ON CONFLICT (device_id, bucket, metric) DO UPDATE SET
    min = min({table}.min, excluded.min),
    max = max({table}.max, excluded.max),
    sum = {table}.sum + excluded.sum,
    count = {table}.count + excluded.count,
    last = CASE WHEN excluded.last_ts >= {table}.last_ts THEN excluded.last ELSE {table}.last END,
    last_ts = max({table}.last_ts, excluded.last_ts)"""


FOLD = {width: _fold_sql(table, width) for width, table in TABLES.items()}


def watermark(db: sqlite3.Connection) -> int:
    """The last reading id the rollups hold."""
    row = db.execute(WATERMARK).fetchone()
    return int(row[0]) if row else 0


def newest_id(db: sqlite3.Connection) -> int:
    """The newest reading's id: a catch-up folds up to it, not after readings that keep arriving."""
    row = db.execute("SELECT max(id) FROM readings").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def catch_up(db: sqlite3.Connection, limit: int, through: int | None = None) -> int:
    """Fold the next `limit` readings (by id, up to id `through`) into both tables, in one transaction; how
    many it folded."""
    db.execute(STAGING)
    db.execute("BEGIN IMMEDIATE")
    try:
        first = watermark(db)
        row = db.execute("SELECT max(id) FROM (SELECT id FROM readings WHERE id > ? AND id <= ? ORDER BY id LIMIT ?)",
                         (first, through if through is not None else 2**63 - 1, limit)).fetchone()
        if row is None or row[0] is None:
            db.execute("COMMIT")
            return 0
        last = int(row[0])
        db.execute("DELETE FROM temp.fold_values")
        db.execute(STAGE, (first, last))
        for sql in FOLD.values():
            db.execute(sql, (first, last))
        db.execute("UPDATE rollup_state SET readings_through = ?", (last,))
        folded = db.execute("SELECT count(*) FROM readings WHERE id > ? AND id <= ?", (first, last)).fetchone()
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return int(folded[0]) if folded else 0
