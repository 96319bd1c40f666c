"""The API's read queries on a real SQLite file (migrated schema, rows inserted by the test)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from gateway.store import read_queries as rq
from gateway.store.schema import connect, migrate


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    conn = await connect(str(tmp_path / "gateway.db"))
    await migrate(conn)
    try:
        yield conn
    finally:
        await conn.close()


async def add_reading(conn: aiosqlite.Connection, device: str, ts: float, **metrics: object) -> None:
    await conn.execute(
        "INSERT INTO readings (device_id, ts, received_at, metrics) VALUES (?, ?, ?, ?)",
        (device, ts, ts + 0.25, json.dumps(metrics)),
    )


async def test_readings_are_newest_first_within_an_inclusive_range_and_limited(db: aiosqlite.Connection) -> None:
    for ts in (100.0, 300.0, 200.0, 400.0):
        await add_reading(db, "AP-01", ts, pm25=ts / 100)
    await add_reading(db, "AP-02", 250.0, pm25=9.0)

    rows = await rq.readings(db, "AP-01", limit=10)
    assert [r["ts"] for r in rows] == [400.0, 300.0, 200.0, 100.0]
    assert rows[0] == {"ts": 400.0, "receivedAt": 400.25, "metrics": {"pm25": 4.0}}

    assert [r["ts"] for r in await rq.readings(db, "AP-01", start=200, end=300, limit=10)] == [300.0, 200.0]
    assert [r["ts"] for r in await rq.readings(db, "AP-01", start=250, limit=10)] == [400.0, 300.0]
    assert [r["ts"] for r in await rq.readings(db, "AP-01", end=150, limit=10)] == [100.0]
    assert [r["ts"] for r in await rq.readings(db, "AP-01", limit=2)] == [400.0, 300.0]
    assert await rq.readings(db, "nobody", limit=10) == []


async def test_latest_reading_is_the_newest_by_the_devices_own_time(db: aiosqlite.Connection) -> None:
    assert await rq.latest_reading(db, "AP-01") is None
    await add_reading(db, "AP-01", 500.0, fanSpeed=2)
    await add_reading(db, "AP-01", 400.0, fanSpeed=1)  # arrived later, measured earlier (a replayed backlog)
    latest = await rq.latest_reading(db, "AP-01")
    assert latest == {"ts": 500.0, "receivedAt": 500.25, "metrics": {"fanSpeed": 2}}


async def test_statistics_cover_numeric_metrics_only_per_metric_counts(db: aiosqlite.Connection) -> None:
    await add_reading(db, "AP-01", 100.0, pm25=4.0, voc=100, powerOn=True, fanSpeed=1)
    await add_reading(db, "AP-01", 200.0, pm25=8.0, voc=200, powerOn=False, fanSpeed=3)
    await add_reading(db, "AP-01", 300.0, pm25=12.0, powerOn=True)  # no voc in this one
    await add_reading(db, "AP-01", 900.0, pm25=1000.0)  # outside the range below
    await add_reading(db, "AP-02", 150.0, pm25=500.0)  # another device

    stats = await rq.metric_statistics(db, "AP-01", start=100, end=300)
    assert stats["readings"] == 3
    assert set(stats["metrics"]) == {"pm25", "voc", "fanSpeed"}  # powerOn is a boolean: left out
    assert stats["metrics"]["pm25"] == {"min": 4.0, "max": 12.0, "avg": pytest.approx(8.0), "count": 3}
    assert stats["metrics"]["voc"] == {"min": 100, "max": 200, "avg": pytest.approx(150.0), "count": 2}
    assert stats["metrics"]["fanSpeed"]["count"] == 2

    assert await rq.metric_statistics(db, "AP-01", start=1000, end=2000) == {"readings": 0, "metrics": {}}
    everything = await rq.metric_statistics(db, "AP-01")
    assert everything["readings"] == 4 and everything["metrics"]["pm25"]["max"] == 1000.0


async def test_command_log_rows_in_the_controllers_json_form_newest_first(db: aiosqlite.Connection) -> None:
    rows = [
        ("c1", "AP-01", "setFanSpeed", 3, "api", "acked", 1, 10.0, 10.1, 10.1, 10.2, None,
         json.dumps({"fanSpeed": 3, "powerOn": True}), None),
        ("c2", "AP-01", "turnOff", None, "cloud", "pending", 0, 20.0, None, None, None, None, None,
         "queued: device offline, sent when it comes back online"),
        ("c3", "AP-02", "turnOn", None, "panel", "timeout", 3, 30.0, 30.0, 90.0, 120.0, "no ack after 3 attempts",
         None, None),
    ]
    await db.executemany(
        "INSERT INTO command_log (command_id, device_id, action, value, source, status, attempts, created_at, sent_at,"
        " last_sent_at, finished_at, error, state, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    log = await rq.command_log(db, "AP-01", limit=10)
    assert [r["commandId"] for r in log] == ["c2", "c1"]
    assert log[1] == {
        "commandId": "c1", "device": "AP-01", "action": "setFanSpeed", "value": 3, "source": "api",
        "status": "acked", "attempts": 1, "createdAt": 10.0, "sentAt": 10.1, "lastSentAt": 10.1,
        "finishedAt": 10.2, "error": None, "state": {"fanSpeed": 3, "powerOn": True}, "note": None,
        "cause": None, "attemptLog": [],
    }
    assert log[0]["state"] is None and log[0]["note"].startswith("queued")
    assert [r["commandId"] for r in await rq.command_log(db, "AP-01", limit=1)] == ["c2"]
    assert await rq.command(db, "c3") == (await rq.command_log(db, "AP-02", limit=1))[0]
    assert await rq.command(db, "nope") is None


async def test_schedule_runs_newest_first_capped_at_fifty(db: aiosqlite.Connection) -> None:
    runs = [(7, "AP-01", "start" if i % 2 == 0 else "end", 1000.0 + i, 2000.0 + i, 3, 1000.0 + i) for i in range(60)]
    runs.append((8, "AP-01", "start", 0.0, 1.0, 2, 5000.0))  # another schedule
    await db.executemany(
        "INSERT INTO schedule_runs (schedule_id, device_id, phase, window_start, window_end, fan_speed, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)", runs,
    )
    history = await rq.schedule_runs(db, 7)
    assert len(history) == rq.SCHEDULE_RUNS_LIMIT == 50
    assert history[0]["at"] == 1059.0 and history[-1]["at"] == 1010.0
    assert set(history[0]) == {"id", "scheduleId", "device", "phase", "windowStart", "windowEnd", "fanSpeed", "at"}
    assert history[0]["phase"] == "end" and history[0]["scheduleId"] == 7 and history[0]["fanSpeed"] == 3
    assert await rq.schedule_runs(db, 99) == []


async def test_reader_connection_cannot_write_and_needs_an_existing_wal_database(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    writer = await connect(str(path))
    await migrate(writer)
    reader = await rq.open_reader(path)
    try:
        with pytest.raises(aiosqlite.OperationalError, match=r"readonly|query_only"):
            await reader.execute("DELETE FROM readings")
        await add_reading(writer, "AP-01", 1.0, pm25=1.0)  # autocommit: visible to the reader at once
        assert len(await rq.readings(reader, "AP-01", limit=5)) == 1
    finally:
        await reader.close()
        await writer.close()

    with pytest.raises(aiosqlite.OperationalError):
        await rq.open_reader(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(ValueError, match="absolute"):
        await rq.open_reader(Path("relative.db"))

    rollback = tmp_path / "rollback.db"
    plain = await aiosqlite.connect(rollback)
    await plain.execute("CREATE TABLE t (x)")
    await plain.close()
    with pytest.raises(RuntimeError, match="WAL"):
        await rq.open_reader(rollback)


async def test_chart_series_are_bucket_averages_oldest_first_with_gaps(db: aiosqlite.Connection) -> None:
    for ts, pm25 in ((100.0, 2.0), (105.0, 4.0), (119.0, 6.0), (135.0, 8.0)):
        await add_reading(db, "AP-01", ts, pm25=pm25, humidity=40)
    await add_reading(db, "AP-01", 125.0, temperature=20.5)  # a reading without pm25: a gap in its line
    await add_reading(db, "AP-01", 500.0, pm25=99.0)  # outside the range
    await add_reading(db, "AP-02", 101.0, pm25=50.0)  # another device
    series = await rq.metric_series(db, "AP-01", start=100, end=140, bucket_s=10, metrics=("pm25", "co2"))
    assert series == {"ts": [100.0, 110.0, 120.0, 130.0], "pm25": [3.0, 6.0, None, 8.0],
                      "co2": [None, None, None, None]}
    assert await rq.metric_series(db, "nobody", start=0, end=1e12, bucket_s=10, metrics=("pm25",)) == {
        "ts": [], "pm25": []}


async def test_latest_quarantine_is_newest_first_without_payloads(db: aiosqlite.Connection) -> None:
    for i in range(5):
        await db.execute(
            "INSERT INTO quarantine (received_at, client_id, device_id, topic, payload, reason) VALUES (?,?,?,?,?,?)",
            (100.0 + i, "AP-01", "AP-01", "device/AP-01/data", b"x" * (i + 1), f"reason {i}"))
    rows = await rq.latest_quarantine(db, limit=3)
    assert [r["reason"] for r in rows] == ["reason 4", "reason 3", "reason 2"]
    assert rows[0] == {"id": 5, "receivedAt": 104.0, "clientId": "AP-01", "device": "AP-01",
                       "topic": "device/AP-01/data", "reason": "reason 4", "size": 5}
