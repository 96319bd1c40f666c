"""Months of running on a ManualClock: 120 days of 20 devices generated straight into SQLite, a retention pass
a day through the real store writer. Retention leaves exactly the configured windows, the rollups equal the
raw aggregates, and the database file stops growing; retention beside flat-out ingest costs no reading."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.core.models import Reading
from gateway.settings_retention import RetentionSection
from tests.fixtures.lifecycle import T0, all_readings, insert_readings, metrics_of, reading_rows, running_store

DAY = 86400.0
DEVICES = 20
INTERVAL = 1800.0  # one reading per device every 30 minutes: 960 a day (the test's time budget)
# Steps as big as the policy allows, no pauses: 120 passes of production-sized steps took a minute.
POLICY = RetentionSection(readings_days=90, rollup_hourly_days=100, rollup_daily_days=110, pause_ms=0,
                          keep_free_mb=1, step_target_ms=1000, batch_rows=100_000, rollup_batch_readings=100_000)


def file_bytes(path: Path) -> int:
    """The database file and its write-ahead log."""
    return path.stat().st_size + path.with_name(path.name + "-wal").stat().st_size


def hourly_aggregates(readings: list[tuple[str, float, float, dict[str, Any]]]) -> list[tuple[Any, ...]]:
    """(device, hour, metric, min, max, sum, count) of the numeric metrics, as SQL over raw rows would give."""
    aggs: dict[tuple[str, int, str], list[Any]] = {}
    for device, ts, _, metrics in readings:
        for key, value in metrics.items():
            if value.__class__ in (int, float):
                agg = aggs.setdefault((device, int(ts) // 3600 * 3600, key), [value, value, 0.0, 0])
                agg[0], agg[1] = min(agg[0], value), max(agg[1], value)
                agg[2] += value
                agg[3] += 1
    return [(*key, *agg) for key, agg in aggs.items()]


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_120_days_of_20_devices_keep_exactly_their_windows_in_a_file_that_stops_growing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    sizes: dict[int, int] = {}
    async with running_store(path, POLICY, commit_interval=0.0) as store:
        for day in range(120):
            insert_readings(path, reading_rows(DEVICES, T0 + day * DAY, T0 + (day + 1) * DAY, INTERVAL))
            store.clock.advance(DAY)  # now: the end of that day
            await store.lifecycle.run_pass()
            sizes[day] = file_bytes(path)
    now = T0 + 120 * DAY
    readings = all_readings(path)  # rows and compacted device-hours
    kept = (len(readings), min(ts for _, ts, _, _ in readings))
    raw = hourly_aggregates(readings)
    with sqlite3.connect(path) as db:
        compacted = db.execute("SELECT sum(count) FROM reading_hours").fetchone()[0]
        oldest_hour = db.execute("SELECT min(bucket) FROM rollup_hourly").fetchone()[0]
        oldest_day = db.execute("SELECT min(bucket) FROM rollup_daily").fetchone()[0]
        rolled = {(d, b, k): (lo, hi, s, n) for d, b, k, lo, hi, s, n in db.execute(
            "SELECT device_id, bucket, metric, min, max, sum, count FROM rollup_hourly WHERE metric != ''")}
    # exactly the readings of the last 90 days
    assert kept[0] == 90 * DEVICES * DAY / INTERVAL and now - 90 * DAY <= kept[1] < now - 90 * DAY + INTERVAL
    assert oldest_hour == now - 100 * DAY and oldest_day == now - 110 * DAY
    # every hour the raw readings still cover has a rollup row that equals their aggregate
    assert len(raw) == 90 * 24 * DEVICES * 6
    for device, bucket, key, low, high, total, count in raw:
        r_low, r_high, r_total, r_count = rolled[(device, bucket, key)]
        assert (r_low, r_high, r_count) == (low, high, count) and math.isclose(r_total, total, rel_tol=1e-12)
    assert compacted == kept[0] - 4 * DEVICES  # all but the last 2 hours' readings (2 per device-hour)
    # steady state from day 110 on (every window full): the file no longer grows
    assert max(sizes[d] for d in range(111, 120)) <= sizes[110] * 1.02, sizes
    assert sizes[119] < sizes[60] * 1.6  # and it stopped early: raw readings are most of it


@pytest.mark.slow
async def test_retention_beside_flat_out_ingest_loses_no_reading(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with running_store(path, RetentionSection(pause_ms=0, batch_rows=500, step_target_ms=20)) as store:
        insert_readings(path, reading_rows(10, T0 - 100 * DAY, T0 - 99 * DAY, 60))  # a day past the window
        await store.lifecycle.catch_up()
        published = 20_000

        async def ingest() -> None:
            for i in range(published):
                ts = T0 + i * 0.01
                await store.writer.put(Reading(f"AP-{i % 10:03d}", ts, metrics_of(i % 10, ts), ts + 0.005))
            await store.writer.flush()

        feeding = asyncio.create_task(ingest())
        report = await store.lifecycle.run_pass()
        await feeding
        await store.lifecycle.catch_up()
    assert report.expired["readings"] == 10 * 1440
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == published
        assert db.execute("SELECT sum(count) FROM rollup_hourly WHERE metric = '' AND bucket >= ?",
                          (T0,)).fetchone()[0] == published
    assert store.metrics.value("gateway_readings_committed_total") == published
