"""The data lifecycle on a real SQLite file: rollups equal the raw computation, retention keeps exactly its
window (and what the rollups or the outbox still need), the size cap, space handed back; time from a ManualClock."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from gateway.core.models import Reading, RowWrite
from gateway.settings_retention import RetentionSection
from gateway.store import history, read_queries
from gateway.store.history import Windows, pieces, widen
from gateway.store.lifecycle_steps import SIZE_CAP_SLICE_S
from tests.fixtures.lifecycle import (
    T0,
    all_readings,
    assert_same_points,
    insert_readings,
    metrics_of,
    raw_series,
    reading_rows,
    running_store,
)

HOUR, DAY = 3600, 86400


async def assert_history_equals_raw(path: Path, device: str, lo: float, hi: float) -> None:
    conn = await read_queries.open_reader(path)
    try:
        raw = await read_queries.metric_statistics(conn, device, start=lo, end=hi)
        got = await history.statistics(conn, device, lo, hi)
        assert (got["from"], got["to"], got["readings"]) == (lo, hi, raw["readings"]), (lo, hi)
        assert set(got["metrics"]) == set(raw["metrics"])
        for name, want in raw["metrics"].items():
            have = got["metrics"][name]
            assert (have["min"], have["max"], have["count"]) == (want["min"], want["max"], want["count"]), name
            assert have["avg"] == pytest.approx(want["avg"], rel=1e-12), name
        for step in (600, HOUR, 3 * HOUR, DAY):
            found = await history.series(conn, device, "pm25", lo, hi, step)
            assert_same_points(found["points"], raw_series(path, device, "pm25", lo, hi, step))
    finally:
        await conn.close()


async def test_rollups_caught_up_or_not_answer_every_range_as_the_raw_readings_do(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with running_store(path) as store:
        # three days of 3 devices, one reading every 5 minutes, through the writer
        for row in reading_rows(3, T0, T0 + 3 * DAY, 300):
            device, ts, received, _, _ = row
            await store.writer.put(Reading(device, ts, metrics_of(int(device[3:]), ts), received))
        await store.writer.flush()
        assert await store.lifecycle.catch_up() == 3 * 3 * 288
        # a device's backlog after an outage: late readings of the first day, and new ones not caught up yet
        for k in range(20):
            ts = T0 + 3600 * 5 + k * 17.0
            await store.writer.put(Reading("AP-001", ts, {"pm25": 500.0 + k, "voc": 7}, T0 + 3 * DAY))
        await store.writer.flush()
        rng = random.Random(7)
        ranges = [(T0, T0 + 3 * DAY), (T0 + 5 * HOUR, T0 + 6 * HOUR), (T0 + 1234.5, T0 + 2 * DAY + 999.25),
                  (T0 + 100, T0 + 200)]
        for _ in range(6):
            a, b = T0 + rng.uniform(0, 3 * DAY), T0 + rng.uniform(0, 3 * DAY)
            ranges.append((min(a, b), max(a, b)))
        for lo, hi in ranges:
            await assert_history_equals_raw(path, "AP-001", lo, hi)  # the late readings not folded in yet
        assert await store.lifecycle.catch_up() == 20
        for lo, hi in ranges:
            await assert_history_equals_raw(path, "AP-001", lo, hi)


def test_a_range_is_cut_into_whole_days_whole_hours_and_raw_ends() -> None:
    lo, hi = T0 - 1800.0, T0 + 2 * DAY + 5400.0
    assert [(p.source, p.start - T0, p.end - T0, p.closed) for p in pieces(lo, hi, "auto")] == [
        ("raw", -1800, 0, False), ("day", 0, 2 * DAY, False), ("hour", 2 * DAY, 2 * DAY + HOUR, False),
        ("raw", 2 * DAY + HOUR, 2 * DAY + 5400, True)]
    # a series step of 3 hours cannot use days; 10 minutes cannot use hours
    assert {p.source for p in pieces(lo, hi, "auto", 3 * HOUR)} == {"raw", "hour"}
    assert [p.source for p in pieces(lo, hi, "auto", 600)] == ["raw"]
    # an end older than the raw window grows to its whole hour; hour resolution widens both ends
    assert widen(T0 + 100, T0 + 5000, "auto", Windows(raw_since=T0 + 4000)) == (T0, T0 + 5000)
    assert widen(T0 + 100, T0 + 5000, "auto", Windows(raw_since=T0 + 9000)) == (T0, T0 + 2 * HOUR)
    assert widen(T0 + 100, T0 + 5000, "hour", Windows()) == (T0, T0 + 2 * HOUR)


async def test_retention_keeps_exactly_its_window_and_what_the_rollups_or_the_outbox_still_need(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    policy = RetentionSection(readings_days=2, rollup_hourly_days=3, rollup_daily_days=4, events_days=1,
                              command_log_days=1, pause_ms=0, batch_rows=100, step_target_ms=1000)
    async with running_store(path, policy, outbox=True) as store:
        for row in reading_rows(2, T0, T0 + 5 * DAY, 600):
            device, ts, received, _, _ = row
            await store.writer.put(Reading(device, ts, metrics_of(int(device[3:]), ts), received))
        for i, status in enumerate(("acked", "pending", "failed")):
            await store.writer.put(RowWrite("command_log", {
                "command_id": f"c{i}", "device_id": "AP-000", "action": "turnOn", "source": "api", "status": status,
                "attempts": 1, "created_at": T0 + i}))
        await store.writer.flush()
        store.clock.advance(5 * DAY)  # now: T0 + 5 days
        report = await store.lifecycle.run_pass()
        # readings past the window but not in the rollups yet: kept until folded (and, like any reading, while
        # they are the newest row: a newer one comes after it here)
        insert_readings(path, [("AP-000", T0 + 60.0, T0 + 5 * DAY, '{"pm25":1}', None),
                               ("AP-001", T0 + 5 * DAY, T0 + 5 * DAY, '{"pm25":2}', None)])
        again = await store.lifecycle.run_pass()
    now = T0 + 5 * DAY
    with sqlite3.connect(path) as db:
        oldest = {t: db.execute(f"SELECT min({c}) FROM {t}").fetchone()[0] for t, c in (
            ("rollup_hourly", "bucket"), ("rollup_daily", "bucket"))}
        oldest["readings"] = min(ts for _, ts, _, _ in all_readings(path))  # rows and compacted
        commands = [r[0] for r in db.execute("SELECT command_id FROM command_log ORDER BY command_id")]
        outbox = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert report.expired["readings"] == 2 * 3 * 144 and again.expired["readings"] == 1
    assert now - 2 * DAY <= oldest["readings"] < now - 2 * DAY + 600
    assert oldest["rollup_hourly"] == now - 3 * DAY and oldest["rollup_daily"] == now - 4 * DAY
    assert commands == ["c1"]  # the pending one stays
    assert outbox == 2 * 5 * 144  # every telemetry row still waiting for the cloud: retention never touches it
    assert store.metrics.value("gateway_retention_deleted_total", table="readings") == 2 * 3 * 144 + 1


async def test_the_size_cap_deletes_the_oldest_readings_first_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    insert_path_rows = list(reading_rows(4, T0, T0 + 2 * DAY, 60))
    # raw readings as rows (compacted, these few would never reach the cap)
    policy = RetentionSection(pause_ms=0, max_db_mb=1, batch_rows=500, step_target_ms=1000, compact_after_hours=0)
    async with running_store(path, policy) as store:
        insert_readings(path, insert_path_rows)
        store.clock.advance(2 * DAY)
        report = await store.lifecycle.run_pass()
    with sqlite3.connect(path) as db:
        kept = {(d, ts) for d, ts in db.execute("SELECT device_id, ts FROM readings")}
        used = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        [(kind, data)] = db.execute("SELECT type, data FROM events").fetchall()
    deleted = [ts for d, ts, *_ in insert_path_rows if (d, ts) not in kept]
    assert report.over_cap == len(deleted) and kept
    assert used * 4096 <= 1024 * 1024
    # oldest first, an hour's slice at a time across the devices
    assert max(deleted) < min(ts for _, ts in kept) + SIZE_CAP_SLICE_S
    assert kind == "storage.size_cap" and f'"deleted":{report.over_cap}' in data
    assert store.metrics.value("gateway_retention_size_cap_deleted_total") == report.over_cap


async def test_freed_pages_go_back_to_the_file_system_in_steps_beyond_the_free_space_kept(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    policy = RetentionSection(readings_days=1, rollup_hourly_days=1, rollup_daily_days=1, pause_ms=0,
                              keep_free_mb=0.25, reclaim_step_pages=100, step_target_ms=1000)
    async with running_store(path, policy) as store:
        insert_readings(path, reading_rows(4, T0, T0 + 3 * DAY, 60))
        store.clock.advance(3 * DAY)
        report = await store.lifecycle.run_pass()
    with sqlite3.connect(path) as db:
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # a new database is created with it
    assert report.reclaimed_pages > 300 and free == 64  # 0.25 MB of 4 KiB pages kept free


async def test_history_reads_run_in_one_snapshot_on_the_api_reader(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with running_store(path) as store:
        insert_readings(path, reading_rows(1, T0, T0 + DAY, 60))
        await store.lifecycle.catch_up()
        conn = await read_queries.open_reader(path)
        try:
            assert isinstance(conn, aiosqlite.Connection)
            got = await history.statistics(conn, "AP-000", T0, T0 + DAY, "day")
            assert got["readings"] == 1440 and (got["from"], got["to"]) == (T0, T0 + 2 * DAY)
            assert not conn.in_transaction
        finally:
            await conn.close()


async def test_a_catch_up_ends_at_the_newest_reading_when_it_started_while_ingest_keeps_going(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    policy = RetentionSection(pause_ms=0, rollup_batch_readings=10, step_target_ms=1000)
    async with running_store(path, policy) as store:
        insert_readings(path, reading_rows(2, T0, T0 + 3600, 60))  # 120 readings waiting to be folded

        async def forever() -> None:
            i = 0
            while True:  # faster than steps of 10 readings can follow
                for _ in range(20):
                    await store.writer.put(Reading("AP-009", T0 + i, {"pm25": 1.0}, T0 + i))
                    i += 1
                await store.writer.flush()

        feeding = asyncio.create_task(forever())
        try:
            folded = await store.lifecycle.catch_up()
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
    assert folded >= 120


async def test_a_buckets_last_value_is_the_newest_by_time_then_by_the_order_stored(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    policy = RetentionSection(pause_ms=0, rollup_batch_readings=10, step_target_ms=1000)
    rows = []  # AP-000: three readings at the same time per hour, the last stored wins; one older, stored later
    for hour in range(30):  # across a day boundary
        ts = T0 + hour * HOUR + 1800.0
        rows += [("AP-000", ts, ts, f'{{"pm25": {v}, "voc": {hour}}}', None) for v in (3, 1, 2)]
        rows.append(("AP-000", ts - 60.0, ts, '{"pm25": 9}', None))
    async with running_store(path, policy) as store:
        insert_readings(path, rows)
        assert await store.lifecycle.catch_up() == 120  # steps of 10 readings: buckets folded across steps
    with sqlite3.connect(path) as db:
        hourly = db.execute("SELECT last, last_ts, min, max, count FROM rollup_hourly WHERE metric = 'pm25'"
                            " ORDER BY bucket").fetchall()
        daily = db.execute("SELECT last, count FROM rollup_daily WHERE metric = 'pm25' ORDER BY bucket").fetchall()
    assert hourly == [(2, T0 + h * HOUR + 1800.0, 1, 9, 4) for h in range(30)]
    assert daily == [(2, 24 * 4), (2, 6 * 4)]


async def test_a_reading_after_a_silence_longer_than_the_window_reaches_the_rollups(tmp_path: Path) -> None:
    """Every reading past the window: all go but the newest row, whatever its age, so the readings table never
    hands out an id again (one the rollups' watermark or a block passed); the next reading is folded, and the
    old newest row goes at the next pass."""
    path = tmp_path / "g.db"
    policy = RetentionSection(readings_days=1, pause_ms=0, batch_rows=100, step_target_ms=1000)
    async with running_store(path, policy) as store:
        insert_readings(path, reading_rows(2, T0, T0 + HOUR, 600))
        store.clock.advance(3 * DAY)
        report = await store.lifecycle.run_pass()
        assert report.expired["readings"] == 2 * 6 - 1
        late = T0 + 3 * DAY - 60.0
        await store.writer.put(Reading("AP-000", late, {"pm25": 42.0}, late))
        await store.writer.flush()
        again = await store.lifecycle.run_pass()
        assert again.expired["readings"] == 1
    conn = await read_queries.open_reader(path)
    try:
        got = await history.statistics(conn, "AP-000", late - 600, late + 600)
    finally:
        await conn.close()
    assert got["readings"] == 1 and got["metrics"]["pm25"]["max"] == 42.0
    with sqlite3.connect(path) as db:
        [(hourly,)] = db.execute("SELECT count(*) FROM rollup_hourly WHERE device_id = 'AP-000' AND metric = 'pm25'"
                                 " AND bucket = ?", (late - late % HOUR,)).fetchall()
    assert hourly == 1
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id, ts FROM readings").fetchall() == [(2 * 6 + 1, late)]
