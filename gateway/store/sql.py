"""The statements the store writer runs. Every value is a bound parameter; no text from a record is
ever part of a statement's text (table and column names come from this module or ROW_TABLES).

Each write has two forms with the same effect (tests/unit/test_store_bound_params.py checks they store
the same rows):
  * per row (`row_sql`, run with executemany): a trickle committed on the event loop's thread;
  * bulk (`bulk_sql`): up to BULK_MAX_ROWS rows in ONE statement, `SELECT * FROM (VALUES (?, ...), ...)
    LIMIT ?`, run on the writer's worker thread. Few statements per batch matter there: sqlite3
    releases the GIL for every step, and each time the worker thread takes it back it waits up to the
    5 ms switch interval while the event loop is busy (per-row executemany of a 1,000-row batch took
    seconds under load). The statement's size is a power of two, its unused rows NULLs cut off by the
    LIMIT: a handful of prepared statements per table, whatever the batch's size. (Rows as one JSON
    array unpacked by json_each cost no less, and SQLite's json_extract ends a string at a \u0000.)
A write without a bulk form (control rows: few, each its own columns) stays per row in a batch too.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True, eq=False)
class Write:
    """One write statement. `order` places it in a batch's transaction (lower first); a row binds its
    `width` values to the statement's parameters in order. `bulk` is the bulk form with `{rows}` where
    the rows' subquery goes (see bulk_sql)."""

    name: str
    order: int
    width: int
    row_sql: str
    bulk: str | None = None


def insert_write(name: str, order: int, head: str, width: int, tail: str = "") -> Write:
    """An INSERT `head` ("INSERT INTO t (a, b)") of `width` values per row, with both forms; `tail`: an upsert."""
    row = "(" + ", ".join("?" * width) + ")"
    return Write(name, order, width, f"{head} VALUES {row}{tail}", f"{head}\n{{rows}}{tail}")


# Rows: (device_id, ts, received_at, metrics JSON, extra JSON or None)
INSERT_READINGS = insert_write("readings", 10, "INSERT INTO readings (device_id, ts, received_at, metrics, extra)", 5)

# The latest reading by the reading's own time (a late, older reading must not replace it); last_seen by
# arrival. Rows: (device_id, last_seen, last_ts, last_metrics JSON)
_LATEST_HEAD = "INSERT INTO device_state (device_id, last_seen, last_ts, last_metrics)"
UPSERT_LATEST = insert_write("latest", 20, _LATEST_HEAD, 4, """
ON CONFLICT (device_id) DO UPDATE SET
    last_seen = max(coalesce(device_state.last_seen, 0), excluded.last_seen),
    last_metrics = CASE WHEN device_state.last_ts IS NULL OR excluded.last_ts >= device_state.last_ts
                        THEN excluded.last_metrics ELSE device_state.last_metrics END,
    last_ts = max(coalesce(device_state.last_ts, 0), excluded.last_ts)""")

# Rows: (device_id, online 0/1, at, at): a status change is also the device's last_seen.
_STATUS_HEAD = "INSERT INTO device_state (device_id, online, status_changed_at, last_seen)"
UPSERT_STATUS = insert_write("status", 30, _STATUS_HEAD, 4, """
ON CONFLICT (device_id) DO UPDATE SET
    online = excluded.online,
    status_changed_at = excluded.status_changed_at,
    last_seen = max(coalesce(device_state.last_seen, 0), excluded.last_seen)""")

# Rows: (ts, device_id, type, data JSON)
INSERT_EVENTS = insert_write("events", 40, "INSERT INTO events (ts, device_id, type, data)", 4)

# Rows: (received_at, client_id, device_id, topic, payload head BLOB, reason, size, sha256 hex)
INSERT_QUARANTINE = insert_write(
    "quarantine", 50,
    "INSERT INTO quarantine (received_at, client_id, device_id, topic, payload, reason, size, sha256)", 8,
)

# Rows: (seq, kind, device_id, ts, body, size, created_at)
INSERT_OUTBOX = insert_write("outbox", 60, "INSERT INTO outbox (seq, kind, device_id, ts, body, size, created_at)", 7)

# Rows: (first seq, last seq) of a run of consecutive seqs. The cloud acknowledges messages in the order they
# were sent, so a batch's seqs are a run or a few: one range delete each, by the primary key, instead of a
# statement (or a bound IN list) per seq. No bulk form: a batch has a handful of runs.
DELETE_OUTBOX = Write("outbox_done", 70, 2, "DELETE FROM outbox WHERE seq BETWEEN ? AND ?")

# Rows: (request_id, method, response, at); the first answer to a request id is kept.
INSERT_RPC = insert_write("rpc", 80, "INSERT OR IGNORE INTO rpc_log (request_id, method, response, at)", 4)

# Hub batches. Rows: (hub_id, batch_id, part, parts, received_at, payload): a part held until its batch closes.
INSERT_HUB_PART = insert_write(
    "hub_part", 90, "INSERT OR IGNORE INTO hub_parts (hub_id, batch_id, part, parts, received_at, payload)", 6,
)
# Rows: (hub_id, batch_id): its batch closed (after the insert of a part closed in the same transaction).
DELETE_HUB_PARTS = Write("hub_parts_done", 91, 2, "DELETE FROM hub_parts WHERE hub_id = ? AND batch_id = ?")
# Rows: (hub_id, batch_id, closed_at, complete 0/1)
INSERT_HUB_CLOSED = insert_write(
    "hub_closed", 92, "INSERT OR REPLACE INTO hub_batches_closed (hub_id, batch_id, closed_at, complete)", 4,
)
# Rows: (closed_at cut-off,): batches closed before it are forgotten.
FORGET_HUB_CLOSED = Write("hub_closed_forget", 93, 1, "DELETE FROM hub_batches_closed WHERE closed_at < ?")

# Control tables written through RowWrite, with their key columns (None: insert only, a history).
ROW_TABLES: dict[str, tuple[str, ...] | None] = {
    "command_log": ("command_id",),
    "schedules": ("id",),
    "schedule_runs": None,
    "desired_layers": ("device_id", "layer"),
    "device_state": ("device_id",),
}
ROW_WRITE_ORDER = 0  # before everything else of a batch, in the order they were put


@lru_cache(maxsize=256)
def row_write(table: str, columns: tuple[str, ...], delete: bool) -> Write:
    """The statement of a RowWrite with these columns: an upsert on the table's key (an insert for a
    history table), or a delete by exactly the key. Raises ValueError for a table or columns it does not
    know how to write (a programming error: the records come from our code)."""
    if table not in ROW_TABLES:
        raise ValueError(f"not a control table: {table!r}")
    key = ROW_TABLES[table]
    if not all(c.isidentifier() for c in columns):
        raise ValueError(f"bad column name in {list(columns)!r}")
    if delete:
        if key is None or set(columns) != set(key):
            raise ValueError(f"delete from {table} needs exactly its key {key}")
        where = " AND ".join(f"{c} = ?" for c in columns)
        return Write(f"{table}.delete", ROW_WRITE_ORDER, len(columns), f"DELETE FROM {table} WHERE {where}")
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    if key is not None:
        updates = [c for c in columns if c not in key]
        if updates:
            sets = ", ".join(f"{c} = excluded.{c}" for c in updates)
            sql += f" ON CONFLICT ({', '.join(key)}) DO UPDATE SET {sets}"
        else:
            sql += f" ON CONFLICT ({', '.join(key)}) DO NOTHING"
    return Write(f"{table}.upsert", ROW_WRITE_ORDER, len(columns), sql)


BULK_MIN_ROWS = 16  # the smallest bulk statement (fewer distinct statements to prepare and keep)
BULK_MAX_ROWS = 256  # the largest: more rows take more statements


@lru_cache(maxsize=128)
def bulk_sql(write: Write, rows: int) -> str:
    """`write`'s bulk form for `rows` rows of parameters and, last, how many of them are real (a LIMIT).
    "WHERE true" lets an upsert's ON CONFLICT follow the SELECT (SQLite's parsing ambiguity)."""
    assert write.bulk is not None
    row = "(" + ", ".join("?" * write.width) + ")"
    return write.bulk.replace("{rows}", f"SELECT * FROM (VALUES {', '.join([row] * rows)}) WHERE true LIMIT ?")


def bulk_sizes(rows: int, width: int, max_params: int) -> list[tuple[int, int]]:
    """(real rows, statement rows) for each bulk statement taking `rows` rows: statements of a power of two
    rows, at most BULK_MAX_ROWS and within SQLite's `max_params` parameters per statement."""
    largest = BULK_MAX_ROWS
    while largest > 1 and largest * width + 1 > max_params:
        largest //= 2
    out = [(largest, largest)] * (rows // largest)
    rest = rows % largest
    if rest:
        size = min(BULK_MIN_ROWS, largest)
        while size < rest:
            size *= 2
        out.append((rest, size))
    return out


# The outbox budget (outbox_budget.py). Parameters: a created_at cut-off; a row count; a count to keep.
OUTBOX_EXPIRE = "DELETE FROM outbox WHERE kind = ? AND created_at < ?"
OUTBOX_TOTALS = "SELECT count(*), coalesce(sum(size), 0) FROM outbox"
OUTBOX_DROP_OLDEST_TELEMETRY = (
    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE kind = 'telemetry' ORDER BY seq LIMIT ?)"
)
OUTBOX_EVENTS_OVER_CAP = (
    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE kind = 'event' ORDER BY seq DESC "
    "LIMIT -1 OFFSET ?)"
)
