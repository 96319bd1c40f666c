"""WAL checkpoints from a connection of their own, so the store writer's commits never wait for one.

SQLite checkpoints on the committing connection once the WAL holds `wal_autocheckpoint` pages: that commit
copies the WAL into the database file and syncs both, and every reading queued behind it waits (measured
with bench_lifecycle: put -> committed p99 at 1,000 readings/s 19-21 ms with it, 7-12 ms without; beside
retention's deletes 44-188 ms with it, 21 ms without). A PASSIVE checkpoint on another connection runs
beside the writer (WAL mode lets it: it never takes the write lock) and the writer restarts the WAL from its
start once everything in it has been copied. The writer keeps a far higher autocheckpoint of its own
(BACKSTOP_PAGES) in case this task is down or cannot keep up.

A checkpoint every `interval` seconds of loop time (not domain time: an interval): at 100 devices x 1
reading / 10 s committed one by one, SQLite's default 1,000 pages came every ~14 s, which the write
figures in the README were measured with; a page written many times between two checkpoints reaches the
database file once (SD-card wear). 5 s and 15 s measured the same put->committed p99 beside retention.

A WAL that grows fast is checkpointed before the interval: beside 1,000 readings/s (bench_lifecycle) the WAL
passed the writer's backstop within the interval, during a retention pass within a few seconds, and the
writer's own checkpoints then stalled ingest's commits 30-66 ms each. So every POLL_S the task reads how many
frames the WAL holds (the wal-index header, a read of the -shm file) and checkpoints at once from
`early_pages` on: at a gateway's ordinary pace (100 devices x 1 reading / 10 s, each committed alone: ~1,000
pages in ~14 s, as above) the WAL gets there about when the interval ends anyway.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosqlite
import structlog

from gateway.core.metrics import Metrics

log = structlog.get_logger(__name__)

BACKSTOP_PAGES = 8000  # the writer's own autocheckpoint (32 MB of 4 KiB pages), for when this task falls behind
CHECKPOINT_INTERVAL_S = 15.0
POLL_S = 1.0  # how often the WAL's length is read (loop time)
# A WAL this long is checkpointed at once. Beside 1,000 readings/s a retention pass wrote up to ~6,000 pages a
# second (ingest's commits alone ~1,500): between two polls the WAL stays short of the backstop.
EARLY_PAGES = BACKSTOP_PAGES // 8
_MX_FRAME = struct.Struct("=I")  # mxFrame: offset 16 of the wal-index header, native byte order (SQLite's file format)


def wal_frames(shm: int) -> int:
    """The frames in the WAL since it last started over, from the wal-index (`shm`: the -shm file, opened)."""
    head = os.pread(shm, 20, 0)
    return int(_MX_FRAME.unpack_from(head, 16)[0]) if len(head) == 20 else 0


class WalCheckpointer:
    def __init__(self, db_path: Path, *, metrics: Metrics, interval: float = CHECKPOINT_INTERVAL_S,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, early_pages: int = EARLY_PAGES) -> None:
        self._path = db_path
        self._metrics = metrics
        self._interval = interval
        self._sleep = sleep
        self._early_pages = early_pages

    async def run(self) -> None:
        """The supervised task: a PASSIVE checkpoint every interval, or as soon as the WAL holds `early_pages`,
        until cancelled."""
        conn = await aiosqlite.connect(str(self._path), isolation_level=None)
        shm = -1
        try:
            await conn.execute("PRAGMA synchronous=NORMAL")  # syncs the WAL, then the database, per checkpoint
            async with conn.execute("SELECT count(*) FROM sqlite_master") as cur:  # a read: the -shm file exists
                await cur.fetchall()  # (and the statement ends: an open one would hold a read transaction)
            shm = os.open(f"{self._path}-shm", os.O_RDONLY)
            copied_through = frames = 0  # the WAL's frames at the last checkpoint (it starts over at the next write)
            while True:
                waited = 0.0
                while waited < self._interval:
                    step = min(POLL_S, self._interval - waited)
                    await self._sleep(step)
                    waited += step
                    frames = wal_frames(shm)
                    if frames < copied_through:  # started over
                        copied_through = 0
                    if frames - copied_through >= self._early_pages:
                        break
                pages, _ = await self.checkpoint(conn)
                # A failed one (0 pages) waits like a done one: not a retry, a warning and a count every poll.
                copied_through = pages or frames
        finally:
            if shm >= 0:
                os.close(shm)
            await conn.close()

    async def checkpoint(self, conn: aiosqlite.Connection) -> tuple[int, int]:
        """(pages in the WAL, pages copied to the database) of one PASSIVE checkpoint."""
        try:
            async with conn.execute("PRAGMA wal_checkpoint(PASSIVE)") as cur:
                row = await cur.fetchone()
        except sqlite3.OperationalError as exc:  # locked by a checkpoint of another process: the next one will do
            self._metrics.inc("gateway_store_checkpoint_errors_total", 1, "background WAL checkpoints that failed")
            log.warning("store.checkpoint_failed", error=str(exc))
            return 0, 0
        in_log, copied = (int(row[1]), int(row[2])) if row else (0, 0)
        self._metrics.inc("gateway_store_checkpoints_total", 1, "background WAL checkpoints")
        return in_log, copied
