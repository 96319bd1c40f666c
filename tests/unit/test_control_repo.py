"""The control repository on a real SQLite file: rows written through the store writer read back as stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiosqlite
import pytest

from gateway.control.command_model import CommandRecord, CommandStatus
from gateway.core.metrics import Metrics
from gateway.core.models import StoreRecord
from gateway.store import control_repo
from gateway.store.control_repo import StoredLayer, StoredRun, StoredSchedule, UnfinishedCommand
from gateway.store.writer import StoreWriter

HOSTILE = "AP-'); DROP TABLE schedules; --"


@dataclass
class Store:
    writer: StoreWriter
    conn: aiosqlite.Connection

    async def write(self, *records: StoreRecord) -> None:
        for record in records:
            await self.writer.put(record)
        await asyncio.wait_for(self.writer.flush(), 10)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics())
    conn = await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        yield Store(writer, conn)
    finally:
        await writer.close()
        await task


def command(cid: str, status: CommandStatus, **kw: object) -> CommandRecord:
    fields: dict[str, object] = {"attempts": 1, "created_at": 10.0, "sent_at": 11.0, "last_sent_at": 12.0, **kw}
    return CommandRecord(cid, HOSTILE, "setFanSpeed", 3, "api", status, **fields)  # type: ignore[arg-type]


async def test_schedules_and_the_id_counter(store: Store) -> None:
    first = StoredSchedule(1, HOSTILE, (0, 2), "08:00", "09:30", 3, True, 5.0)
    second = StoredSchedule(2, "AP-02", (6,), "22:00", "06:00", 1, False, 6.0)
    await store.write(control_repo.schedule_row(first, updated_at=5.0),
                      control_repo.schedule_row(second, updated_at=6.0))
    assert await control_repo.load_schedules(store.conn) == [first, second]
    await store.write(control_repo.schedule_delete(2))
    assert await control_repo.load_schedules(store.conn) == [first]
    assert await control_repo.schedule_id_high_water(store.conn) == 2  # a deleted id is never given again


async def test_an_empty_store_has_nothing_to_restore(store: Store) -> None:
    assert await control_repo.schedule_id_high_water(store.conn) == 0
    assert await control_repo.load_schedules(store.conn) == []
    assert await control_repo.load_layers(store.conn) == []
    assert await control_repo.unfinished_commands(store.conn) == []


async def test_open_and_unrecorded_runs(store: Store) -> None:
    ended = StoredRun(1, HOSTILE, 100.0, 200.0, 3)  # started, ended while down: no end row
    closed = StoredRun(1, HOSTILE, 300.0, 400.0, 3)  # started and ended
    running = StoredRun(2, "AP-02", 450.0, 600.0, 4)  # still in its window at 500
    await store.write(
        control_repo.run_row(ended, "start", 100.0),
        control_repo.run_row(closed, "start", 300.0), control_repo.run_row(closed, "end", 400.0),
        control_repo.run_row(running, "start", 450.0),
    )
    assert await control_repo.run_starts_open_at(store.conn, 500.0) == {(2, 450.0)}
    assert await control_repo.runs_ended_unrecorded(store.conn, 500.0) == [ended]
    await store.write(control_repo.run_row(ended, "end", 500.0))
    assert await control_repo.runs_ended_unrecorded(store.conn, 500.0) == []


async def test_layers_upsert_and_delete(store: Store) -> None:
    manual = StoredLayer(HOSTILE, "manual", False, 2, None, 1.0, "panel")
    preclean = StoredLayer(HOSTILE, "preclean", True, 5, 900.0, 300.0, "cloud")
    await store.write(control_repo.layer_row(manual), control_repo.layer_row(preclean),
                      control_repo.layer_row(StoredLayer(HOSTILE, "manual", True, 4, None, 2.0, "api")))
    layers = await control_repo.load_layers(store.conn)
    assert sorted(layers, key=lambda x: x.layer) == [StoredLayer(HOSTILE, "manual", True, 4, None, 2.0, "api"),
                                                     preclean]
    await store.write(control_repo.layer_delete(HOSTILE, "preclean"))
    assert [x.layer for x in await control_repo.load_layers(store.conn)] == ["manual"]


async def test_unfinished_commands_are_the_pending_and_sent_ones(store: Store) -> None:
    await store.write(
        control_repo.command_row(command("c-pending", CommandStatus.PENDING, attempts=0, sent_at=None,
                                         last_sent_at=None, note="queued: device offline")),
        control_repo.command_row(command("c-sent", CommandStatus.SENT)),
        control_repo.command_row(command("c-acked", CommandStatus.ACKED, finished_at=13.0,
                                         state={"fanSpeed": 3, "powerOn": True})),
    )
    found = sorted(await control_repo.unfinished_commands(store.conn), key=lambda c: c.command_id)
    assert found == [
        UnfinishedCommand("c-pending", HOSTILE, "setFanSpeed", 3, "api", 0, 10.0, None, None, "queued: device offline"),
        UnfinishedCommand("c-sent", HOSTILE, "setFanSpeed", 3, "api", 1, 10.0, 11.0, 12.0, None),
    ]
    state = await (await store.conn.execute("SELECT status, state FROM command_log WHERE command_id = ?",
                                            ("c-acked",))).fetchone()
    assert tuple(state or ()) == ("acked", '{"fanSpeed":3,"powerOn":true}')
