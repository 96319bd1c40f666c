"""Jobs after a commit (the outbox budget, the data lifecycle's steps): the batch before them is durable, so a
job that raises is counted and logged, never a reason to commit the batch again or to stop the writer."""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from gateway.core.metrics import Metrics
from gateway.core.models import HubPartsWanted, LifecycleStep, Reading
from gateway.store import hub_parts, lifecycle_steps
from gateway.store.planner import BatchPlan, JobContext
from gateway.store.record_kinds import RECORD_PLANNERS
from gateway.store.writer import StoreWriter


@dataclass(frozen=True, slots=True)
class _Faulty:
    """A record kind whose job raises what a bug (or a block that does not decode) would."""

    error: Exception


class _RaisingJob:
    """Begins its own transaction, then raises (a bug between its BEGIN and its COMMIT)."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def __call__(self, conn: aiosqlite.Connection, context: JobContext) -> None:
        await conn.execute("BEGIN")
        await conn.execute("DELETE FROM outbox WHERE seq = 1")
        raise self.error


def _plan_faulty(record: _Faulty, plan: BatchPlan) -> None:
    plan.jobs.append(_RaisingJob(record.error))


def _reading(i: int) -> Reading:
    return Reading("AP-01", 1763800000.0 + i, {"pm25": 1.0}, 1763800000.5)


def _stored(db: Path) -> list[float]:
    with sqlite3.connect(db) as conn:
        return [ts for (ts,) in conn.execute("SELECT ts FROM readings ORDER BY id")]


@pytest.mark.parametrize("error", [ValueError("no such block version"), zlib.error("incomplete block")])
async def test_a_job_that_raises_neither_stores_its_batch_twice_nor_stops_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setitem(RECORD_PLANNERS, _Faulty, _plan_faulty)
    metrics = Metrics()
    writer = StoreWriter(tmp_path / "g.db", metrics=metrics, outbox=True)
    await writer.open()
    task = asyncio.create_task(writer.run())
    await writer.put(_reading(0))
    await writer.put(_Faulty(error))  # type: ignore[arg-type]
    await writer.put(_reading(1))
    await asyncio.wait_for(writer.flush(), 5)
    await writer.put(_reading(2))  # the writer still runs
    await asyncio.wait_for(writer.flush(), 5)
    assert not task.done()
    await writer.close()
    await task
    # every reading stored once, the next batch committed (not inside the transaction the job left open), and
    # what the job did before it raised rolled back
    assert _stored(tmp_path / "g.db") == [1763800000.0, 1763800001.0, 1763800002.0]
    assert metrics.value("gateway_store_job_errors_total") == 1
    assert metrics.value("gateway_store_rows_refused_total") == 0
    with sqlite3.connect(tmp_path / "g.db") as conn:
        assert [seq for (seq,) in conn.execute("SELECT seq FROM outbox ORDER BY seq")] == [1, 2, 3]


async def test_a_lifecycle_step_whose_block_does_not_decode_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def undecodable(step: LifecycleStep, db: sqlite3.Connection) -> int:
        raise zlib.error("Error -5 while decompressing data: incomplete or truncated stream")

    monkeypatch.setitem(lifecycle_steps.COMPACTION, "compact", undecodable)
    metrics = Metrics()
    writer = StoreWriter(tmp_path / "g.db", metrics=metrics)
    await writer.open()
    task = asyncio.create_task(writer.run())
    step = LifecycleStep("compact", "readings", 0.0, 100, asyncio.get_running_loop().create_future())
    await writer.put(_reading(0))
    await writer.put(step)
    with pytest.raises(zlib.error):
        await asyncio.wait_for(step.done, 5)  # the lifecycle hears of it (and tries again next pass)
    await writer.put(_reading(1))
    await asyncio.wait_for(writer.flush(), 5)
    await writer.close()
    await task
    assert _stored(tmp_path / "g.db") == [1763800000.0, 1763800001.0]
    assert metrics.value("gateway_lifecycle_errors_total") == 1


async def test_a_hub_parts_read_that_fails_tells_its_waiter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: sqlite3.Connection, hub_id: str, batch_id: str) -> list[Any]:
        raise ValueError("a part that does not read back")

    monkeypatch.setattr(hub_parts, "_read", broken)
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics())
    await writer.open()
    task = asyncio.create_task(writer.run())
    request = HubPartsWanted("HUB-1", "b-1", asyncio.get_running_loop().create_future())
    await writer.put(request)
    with pytest.raises(ValueError, match="does not read back"):
        await asyncio.wait_for(request.reply, 5)  # not a hub batch waiting for ever
    await writer.close()
    await task
