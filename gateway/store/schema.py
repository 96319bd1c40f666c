"""Schema migrations, applied in order and counted by `PRAGMA user_version`."""

from __future__ import annotations

import aiosqlite

# Each entry moves the schema from version i to i+1. Never edit a shipped entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE readings (
        id INTEGER PRIMARY KEY,
        device_id TEXT NOT NULL,
        ts REAL NOT NULL,              -- the reading's own time (epoch s)
        received_at REAL NOT NULL,     -- when the gateway accepted it
        metrics TEXT NOT NULL,         -- JSON object name -> number | bool
        extra TEXT                     -- JSON object of unknown payload fields, or NULL
    );
    CREATE INDEX readings_device_ts ON readings (device_id, ts);

    CREATE TABLE device_state (
        device_id TEXT PRIMARY KEY,
        online INTEGER NOT NULL DEFAULT 0,
        status_changed_at REAL,
        last_seen REAL,
        last_ts REAL,
        last_metrics TEXT
    );

    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        received_at REAL NOT NULL,
        client_id TEXT,
        device_id TEXT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX quarantine_received ON quarantine (received_at);

    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        device_id TEXT,
        type TEXT NOT NULL,
        data TEXT NOT NULL             -- JSON object
    );
    CREATE INDEX events_device_ts ON events (device_id, ts);
    """,
    # 2: store-and-forward. Rows wait here until the cloud broker's PUBACK; seq makes the msgId
    # ({gatewayId}:{seq}). AUTOINCREMENT keeps seq growing even after every row was deleted.
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,            -- 'telemetry' | 'event'
        device_id TEXT,
        ts REAL NOT NULL,              -- the reading's or event's own time
        body TEXT NOT NULL,            -- telemetry: metrics object; event: {"type", "data"}
        size INTEGER NOT NULL,         -- bytes of body, for the disk budget
        created_at REAL NOT NULL
    );
    CREATE INDEX outbox_kind_seq ON outbox (kind, seq);

    CREATE TABLE rpc_log (
        request_id TEXT PRIMARY KEY,   -- JSON-RPC id as sent by the cloud (JSON text)
        method TEXT NOT NULL,
        response TEXT NOT NULL,        -- the first answer, repeated for a repeated id
        at REAL NOT NULL
    );
    """,
    # 3: control. The command audit log (one row per commandId, updated as it moves pending -> sent ->
    # acked | failed | timeout | cancelled), weekly schedules and their execution history, and the
    # desired-state layers that must survive a restart (manual setting, running pre-clean).
    """
    CREATE TABLE command_log (
        command_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        action TEXT NOT NULL,
        value INTEGER,
        source TEXT NOT NULL,          -- panel | api | cloud | schedule | preclean | rule
        status TEXT NOT NULL,          -- pending | sent | acked | failed | timeout | cancelled
        attempts INTEGER NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL,
        last_sent_at REAL,
        finished_at REAL,
        error TEXT,
        state TEXT,                    -- JSON: the device's reported state from its ack
        note TEXT
    );
    CREATE INDEX command_log_device ON command_log (device_id, created_at);

    CREATE TABLE schedules (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL,
        days TEXT NOT NULL,            -- JSON list of day indexes, 0 = Monday
        start TEXT NOT NULL,           -- HH:MM local time
        end TEXT NOT NULL,
        fan_speed INTEGER NOT NULL,
        enabled INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX schedules_device ON schedules (device_id);

    CREATE TABLE schedule_runs (
        id INTEGER PRIMARY KEY,
        schedule_id INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        phase TEXT NOT NULL,           -- start | end
        window_start REAL NOT NULL,
        window_end REAL NOT NULL,
        fan_speed INTEGER NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX schedule_runs_schedule ON schedule_runs (schedule_id, at);

    -- A quarantined payload is kept up to QUARANTINE_KEEP_BYTES: a device flooding oversized garbage must
    -- not fill the disk; its full size and digest still tell what it sent.
    ALTER TABLE quarantine ADD COLUMN size INTEGER;
    ALTER TABLE quarantine ADD COLUMN sha256 TEXT;

    CREATE TABLE desired_layers (
        device_id TEXT NOT NULL,
        layer TEXT NOT NULL,           -- manual | preclean
        power INTEGER NOT NULL,
        fan_speed INTEGER NOT NULL,
        expires_at REAL,
        started_at REAL NOT NULL,
        source TEXT NOT NULL,
        PRIMARY KEY (device_id, layer)
    );
    """,
    # 4: hub batches (CONTRACT section 3). The parts of a batch not yet complete, kept until it closes
    # (their PUBACKs wait for these rows, so a restart resumes the batch); and the batches closed lately,
    # so a part sent again after its batch closed is known for what it is.
    """
    CREATE TABLE hub_parts (
        hub_id TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        part INTEGER NOT NULL,
        parts INTEGER NOT NULL,
        received_at REAL NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (hub_id, batch_id, part)
    );

    CREATE TABLE hub_batches_closed (
        hub_id TEXT NOT NULL,
        batch_id TEXT NOT NULL,
        closed_at REAL NOT NULL,
        complete INTEGER NOT NULL,     -- 1: its readings were stored; 0: given up, its parts quarantined
        PRIMARY KEY (hub_id, batch_id)
    );
    CREATE INDEX hub_batches_closed_at ON hub_batches_closed (closed_at);
    """,
    # 5: the command audit log tells automatic commands from a person's: `cause` is the layer behind a
    # command the reconciler sent (source 'reconcile'); `attempt_log` keeps when each attempt left and how
    # it ended (a JSON list), as a retry overwrites last_sent_at.
    """
    ALTER TABLE command_log ADD COLUMN cause TEXT;
    ALTER TABLE command_log ADD COLUMN attempt_log TEXT;
    """,
    # 6: the data lifecycle (store/retention.py, store/rollups.py). Hourly and daily aggregates per device and
    # metric, kept longer than raw readings; bucket = the UTC hour's (day's) start, epoch s. metric '' holds
    # the bucket's reading count (readings without a numeric metric count too). Readings already stored are
    # folded in by the catch-up, from the first. Indexes by time for the
    # retention deletes of the low-volume tables (readings are deleted per device through readings_device_ts).
    """
    CREATE TABLE rollup_hourly (
        device_id TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        metric TEXT NOT NULL,
        min NOT NULL,                  -- no type: an integer metric's values stay integers
        max NOT NULL,
        sum NOT NULL,
        count INTEGER NOT NULL,
        last_ts REAL NOT NULL,         -- the newest reading's own time in the bucket
        last NOT NULL,                 -- its value
        PRIMARY KEY (device_id, bucket, metric)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_daily (
        device_id TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        metric TEXT NOT NULL,
        min NOT NULL,
        max NOT NULL,
        sum NOT NULL,
        count INTEGER NOT NULL,
        last_ts REAL NOT NULL,
        last NOT NULL,
        PRIMARY KEY (device_id, bucket, metric)
    ) WITHOUT ROWID;
    -- The rollups hold every reading with id <= readings_through (one row; the catch-up moves it).
    CREATE TABLE rollup_state (readings_through INTEGER NOT NULL);
    INSERT INTO rollup_state VALUES (0);
    CREATE INDEX events_ts ON events (ts);
    CREATE INDEX command_log_created ON command_log (created_at);
    CREATE INDEX schedule_runs_at ON schedule_runs (at);
    CREATE INDEX rpc_log_at ON rpc_log (at);
    """,
    # 7: compacted raw readings (store/compaction.py). A device's readings of one UTC hour (hour = its start,
    # epoch s) that the rollups hold, as one compact value (store/reading_blocks.py) instead of a row each:
    # count = how many it holds, through = it holds every readings row of its device and hour with id <=
    # through. Such a row is "covered" until compaction deletes it (in id order, a page at a time); raw_rows
    # are the readings rows not covered, what raw reads take beside the blocks (store/raw_readings.py).
    """
    CREATE TABLE reading_hours (
        device_id TEXT NOT NULL,
        hour INTEGER NOT NULL,
        count INTEGER NOT NULL,
        through INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (device_id, hour)
    );
    CREATE VIEW raw_rows AS SELECT * FROM readings AS r WHERE NOT EXISTS (
        SELECT 1 FROM reading_hours AS b WHERE b.device_id = r.device_id
        AND b.hour = CAST(r.ts AS INTEGER) - (r.ts < CAST(r.ts AS INTEGER))
                     - ((CAST(r.ts AS INTEGER) - (r.ts < CAST(r.ts AS INTEGER))) % 3600 + 3600) % 3600
        AND r.id <= b.through
    );
    -- The ids of covered rows not deleted yet (one row while a compaction wave is under way; a restart ends it).
    CREATE TABLE compaction_wave (id INTEGER PRIMARY KEY CHECK (id = 1), first INTEGER NOT NULL, last INTEGER NOT NULL);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(conn: aiosqlite.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; returns the version found before."""
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    found = int(row[0]) if row else 0
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {found} is newer than this gateway understands ({SCHEMA_VERSION})"
        )
    for version in range(found, SCHEMA_VERSION):
        # executescript commits first; the BEGIN/COMMIT makes each migration all-or-nothing
        await conn.executescript(f"BEGIN;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;")
    return found


async def connect(path: str, *, synchronous: str = "NORMAL", any_thread: bool = False) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. any_thread: the store writer also commits
    # small batches on the event loop's thread (never at the same time as aiosqlite's worker).
    conn = await aiosqlite.connect(path, isolation_level=None, check_same_thread=not any_thread)
    try:
        # A new file is created with incremental auto-vacuum, so retention can hand freed pages back in small
        # steps (retention.py) instead of a full VACUUM. It must come before anything writes the file's header
        # (journal_mode=WAL does); on an existing database without it, this is a no-op: converting one takes
        # a full VACUUM (a copy of the whole file), which the daemon never runs. Its free pages are reused.
        await conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute(f"PRAGMA synchronous={synchronous}")
        await conn.execute("PRAGMA busy_timeout=5000")
        # 256 KiB of page cache (default 2 MB): writes are appends (the hot pages are each table's and index's
        # last ones) and deletes of the oldest outbox rows; the OS page cache holds the rest. A burst fills the
        # cache and it stays resident: 512 KiB cost ~0.3 MB more after one, at the same commit rate here.
        await conn.execute("PRAGMA cache_size=-256")
        await conn.execute("PRAGMA foreign_keys=ON")
        # Sorts (the rollups' catch-up groups a step's readings) in memory: spilled to a temporary file they
        # took ~1.7x as long here; a step's sort is bounded by its size (rollup_batch_readings).
        await conn.execute("PRAGMA temp_store=MEMORY")
    except BaseException:
        await conn.close()  # a file that is not a database: its worker thread would outlive the daemon
        raise
    return conn
