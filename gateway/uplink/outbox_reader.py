"""Read side of the outbox for the uplink: its own connection, beside the writer (WAL)."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from gateway.core.models import OutboxEntry


class OutboxReader:
    def __init__(self, db_path: Path) -> None:
        self._db_path = db_path
        self._conn: aiosqlite.Connection | None = None

    async def open(self) -> None:
        # Only reads go through this connection; the StoreWriter is the one writer.
        self._conn = await aiosqlite.connect(str(self._db_path))
        # Reads are sequential pages of 100-400 rows and counts: a large cache buys nothing (default 2 MB of RSS).
        await self._conn.execute("PRAGMA cache_size=-128")

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def _c(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("outbox reader is not open")
        return self._conn

    async def fetch(self, after: int, upto: int, limit: int, kind: str | None = None) -> list[OutboxEntry]:
        """Rows with after < seq <= upto, oldest first."""
        sql = "SELECT seq, kind, device_id, ts, body FROM outbox WHERE seq > ? AND seq <= ?"
        params: tuple[object, ...] = (after, upto)
        if kind is not None:
            sql += " AND kind = ?"
            params += (kind,)
        async with self._c().execute(sql + " ORDER BY seq LIMIT ?", (*params, limit)) as cur:
            return [OutboxEntry(int(s), k, d, float(t), b) for s, k, d, t, b in await cur.fetchall()]

    async def backlog(self) -> tuple[int, float | None]:
        """(rows waiting, created_at of the oldest)."""
        async with self._c().execute("SELECT count(*), min(created_at) FROM outbox") as cur:
            row = await cur.fetchone()
        return (int(row[0]), row[1]) if row else (0, None)

    async def rpc_answer(self, request_id: str) -> str | None:
        async with self._c().execute("SELECT response FROM rpc_log WHERE request_id = ?", (request_id,)) as cur:
            row = await cur.fetchone()
        return str(row[0]) if row else None
