"""Opening the database for the store writer: the file, its schema brought up to date, and what the writer needs
to know of it (the next outbox seq, SQLite's parameter limit)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import structlog

from gateway.store import aiosqlite_access
from gateway.store.schema import connect, migrate

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Opened:
    conn: aiosqlite.Connection
    next_seq: int  # the seq the next outbox row gets (msgIds keep growing across restarts)
    max_params: int  # parameters per statement


async def open_for_writing(path: Path, synchronous: str, wal_autocheckpoint: int) -> Opened:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A file that cannot be opened at all (a directory, no permission) fails here, before aiosqlite starts a
    # worker thread that a failed connect leaves running.
    sqlite3.connect(str(path)).close()
    conn = await connect(str(path), synchronous=synchronous, any_thread=True)
    try:
        aiosqlite_access.check(conn)
        await conn.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
        found = await migrate(conn)
        async with conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'") as cur:
            row = await cur.fetchone()
    except BaseException:
        await conn.close()  # its thread would keep the process alive
        raise
    next_seq = (int(row[0]) if row else 0) + 1
    max_params = aiosqlite_access.raw_connection(conn).getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    log.info("store.opened", path=str(path), schema_from=found, next_seq=next_seq)
    return Opened(conn, next_seq, max_params)
