"""WAL checkpoints beside the store writer: copied from their own connection, the WAL restarts from its start."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite

from gateway.core.metrics import Metrics
from gateway.core.models import Reading
from gateway.store.checkpoints import BACKSTOP_PAGES, WalCheckpointer
from gateway.store.writer import StoreWriter
from tests.fixtures.gateway import wait_for
from tests.fixtures.lifecycle import T0, metrics_of


async def test_a_passive_checkpoint_beside_the_writer_copies_the_wal_and_the_wal_is_reused(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    wal = tmp_path / "g.db-wal"
    metrics = Metrics()
    writer = StoreWriter(path, metrics=metrics, wal_autocheckpoint=BACKSTOP_PAGES)
    await writer.open()
    task = asyncio.create_task(writer.run())
    checkpointer = WalCheckpointer(path, metrics=metrics)
    conn = await aiosqlite.connect(str(path), isolation_level=None)

    async def write(start: int, count: int) -> None:
        for i in range(start, start + count):
            await writer.put(Reading(f"AP-{i % 20:03d}", T0 + i, metrics_of(i % 20, T0 + i), T0 + i))
            if i % 50 == 0:
                await writer.flush()  # many commits, as ingest makes them
        await writer.flush()

    try:
        await write(0, 3000)
        in_log, copied = await checkpointer.checkpoint(conn)
        assert in_log > 100 and copied == in_log  # nobody else held the WAL: all of it reached the database file
        rounds = [in_log]
        for round_ in range(3):
            await write(3000 + round_ * 3000, 3000)
            in_log, copied = await checkpointer.checkpoint(conn)
            assert copied == in_log
            rounds.append(in_log)
        # the writer started over at the WAL's beginning after each: it holds one round's frames at most
        frame = 24 + 4096
        assert wal.stat().st_size <= 32 + max(rounds) * frame < 32 + sum(rounds) * frame / 2
        assert metrics.value("gateway_store_checkpoints_total") == 4
    finally:
        await conn.close()
        await writer.close()
        await task


class _Polls:
    """The checkpointer's sleep: loop time passes only as it says; each poll is counted."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def _writer(path: Path, metrics: Metrics) -> AsyncIterator[StoreWriter]:
    """A running store writer whose own autocheckpoint is the backstop (as in the daemon)."""
    writer = StoreWriter(path, metrics=metrics, wal_autocheckpoint=BACKSTOP_PAGES)
    await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        yield writer
    finally:
        await writer.close()
        await task


async def _burst(writer: StoreWriter, flush_every: int = 0) -> None:
    """3,000 readings of 20 devices: hundreds of WAL pages."""
    for i in range(3000):
        await writer.put(Reading(f"AP-{i % 20:03d}", T0 + i, metrics_of(i % 20, T0 + i), T0 + i))
        if flush_every and i % flush_every == 0:
            await writer.flush()
    await writer.flush()


async def test_a_wal_that_grows_fast_is_checkpointed_before_the_interval(tmp_path: Path) -> None:
    metrics, polls = Metrics(), _Polls()
    async with _writer(tmp_path / "g.db", metrics) as writer:
        checkpointer = asyncio.create_task(WalCheckpointer(tmp_path / "g.db", metrics=metrics, interval=3600.0,
                                                           sleep=polls.sleep, early_pages=200).run())
        try:
            await asyncio.sleep(0.05)
            assert metrics.value("gateway_store_checkpoints_total") == 0  # an idle WAL waits for the interval
            await _burst(writer, flush_every=50)
            await wait_for(lambda: metrics.value("gateway_store_checkpoints_total") >= 1)
            assert sum(polls.slept) < 3600.0  # long before the interval
            checkpoints, polled = metrics.value("gateway_store_checkpoints_total"), len(polls.slept)
            await wait_for(lambda: len(polls.slept) >= polled + 20)
            assert metrics.value("gateway_store_checkpoints_total") == checkpoints  # the WAL copied: none more
        finally:
            checkpointer.cancel()
            await asyncio.gather(checkpointer, return_exceptions=True)


async def test_a_checkpoint_that_fails_is_not_retried_at_every_poll(tmp_path: Path) -> None:
    class Refused(WalCheckpointer):
        attempts = 0

        async def checkpoint(self, conn: aiosqlite.Connection) -> tuple[int, int]:
            Refused.attempts += 1
            return 0, 0  # what checkpoint() answers when another process holds the checkpoint lock

    metrics, polls = Metrics(), _Polls()
    async with _writer(tmp_path / "g.db", metrics) as writer:
        await _burst(writer)  # a WAL past the early threshold
        checkpointer = asyncio.create_task(Refused(tmp_path / "g.db", metrics=metrics, interval=3600.0,
                                                   sleep=polls.sleep, early_pages=200).run())
        try:
            await wait_for(lambda: len(polls.slept) >= 30)
            assert Refused.attempts == 1  # the WAL did not grow again: the next try waits for it or the interval
        finally:
            checkpointer.cancel()
            await asyncio.gather(checkpointer, return_exceptions=True)
