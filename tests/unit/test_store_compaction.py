"""Raw readings compacted into one row per device-hour (store/compaction.py) read as they did as rows: the API's
readings, statistics and chart, history's raw ends, export and the resend memory answer the same; compaction
is exact across a restart; what waits in the outbox is untouched; an earlier database migrates."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.cli.export import _metric_names, _readings
from gateway.core.clock import ManualClock
from gateway.core.models import LifecycleStep, Reading
from gateway.settings_retention import RetentionSection
from gateway.store import history, queries, raw_readings, read_queries
from gateway.store.compaction import compact_hours, plan_wave
from gateway.store.lifecycle import DataLifecycle
from gateway.store.reading_blocks import CorruptBlockError, decode
from gateway.store.schema import MIGRATIONS
from tests.fixtures.lifecycle import T0, all_readings, insert_readings, metrics_of, reading_rows, running_store

HOUR = 3600
POLICY = RetentionSection(pause_ms=0, step_target_ms=1000)  # compacts device-hours ended 2 hours ago
DEVICES = ("AP-000", "AP-001")
QUIET = "AP-009"  # three readings in the first hour, then silent: all of them compacted


def compact_json(value: Any) -> str:
    """JSON as the store writer writes it."""
    return json.dumps(value, separators=(",", ":"))


def same(got: Any, want: Any, key: str = "") -> None:
    """Equal, but for averages (float sums in another order)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (got, want)
        for k in want:
            same(got[k], want[k], k)
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), (got, want)
        for g, w in zip(got, want, strict=True):
            same(g, w, key)
    elif key == "avg" and isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-12), (got, want)
    else:
        assert got == want and type(got) is type(want), (key, got, want)


async def raw_reads(path: Path, now: float) -> dict[str, Any]:
    """Every read of raw readings, over ranges that start and end inside hours."""
    lo, hi = T0 + 1234.5, T0 + 5 * HOUR + 77
    windows = history.Windows(raw_since=T0 - HOUR)
    out: dict[str, Any] = {}
    conn = await read_queries.open_reader(path)
    try:
        for device in DEVICES:
            out[f"{device} newest"] = await read_queries.readings(conn, device, limit=50)
            out[f"{device} range"] = await read_queries.readings(conn, device, start=lo, end=hi, limit=10_000)
            out[f"{device} old"] = await read_queries.readings(conn, device, end=T0 + 2 * HOUR, limit=7)
            out[f"{device} stats"] = await read_queries.metric_statistics(conn, device, start=lo, end=hi)
            out[f"{device} chart"] = await read_queries.metric_series(
                conn, device, start=lo, end=hi, bucket_s=600, metrics=("pm25", "powerOn", "voc"))
            for resolution in ("raw", "auto"):
                out[f"{device} {resolution}"] = await history.statistics(conn, device, lo, hi, resolution, windows)
                out[f"{device} {resolution} series"] = await history.series(conn, device, "pm25", lo, hi, 600,
                                                                             resolution, windows)
        out["recent"] = await queries.load_recent_readings(conn, (*DEVICES, QUIET), 64)
    finally:
        await conn.close()
    with sqlite3.connect(path) as db:
        for since, until in ((None, None), (lo, hi)):
            rows = _readings(db, [], since, until)
            out[f"export {since}"] = list(rows)
            out[f"export {since} names"] = _metric_names(db, ["AP-001"], since, until)
    return out


async def test_raw_reads_answer_the_same_before_and_after_compaction_late_readings_too(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with running_store(path, POLICY) as store:
        insert_readings(path, [(QUIET, T0 + 100.5 + k, T0 + 101.0 + k, compact_json(metrics_of(9, T0 + k)),
                                '{"fw":"1"}' if k == 1 else None) for k in range(3)])
        # one with extra fields, one at the same time as another (stored after it)
        insert_readings(path, [("AP-000", T0 + 1500.0, T0 + 1501.0, '{"pm25":1.5,"note":"x"}', '{"fw":"2"}'),
                               ("AP-001", T0 + 1500.25, T0 + 1502.0, '{"pm25":99.25}', None)])
        insert_readings(path, reading_rows(2, T0, T0 + 6 * HOUR, 10))
        store.clock.advance(6 * HOUR)
        before = await raw_reads(path, store.clock.now())
        report = await store.lifecycle.run_pass()
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT count(*), min(ts) FROM readings").fetchone()
            blocks = db.execute("SELECT count(*), sum(count) FROM reading_hours").fetchone()
        assert report.compacted == blocks[1] == 2 * 4 * 360 + 2 + 3 and blocks[0] == 2 * 4 + 1
        assert rows == (2 * 2 * 360, T0 + 4 * HOUR)  # the last two hours stay rows
        same(await raw_reads(path, store.clock.now()), before)

        # a late reading in a compacted hour: a row until the next pass folds it and merges it into its block
        await store.writer.put(Reading("AP-001", T0 + 2000.0, {"pm25": 3.5, "voc": 7}, T0 + 6 * HOUR))
        await store.writer.put(Reading("AP-000", T0 + 6 * HOUR, {"pm25": 4.0}, T0 + 6 * HOUR))  # the newest row
        await store.writer.flush()
        with_late = await raw_reads(path, store.clock.now())
        assert with_late != before
        again = await store.lifecycle.run_pass()
        assert again.compacted == 1
        same(await raw_reads(path, store.clock.now()), with_late)


async def step(store: Any, action: str, cutoff: float, limit: int, through: int = 0,
               found: list[Any] | None = None) -> tuple[int, list[Any]]:
    done: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
    record = LifecycleStep(action, "readings", cutoff, limit, done, through, found or [])
    await store.writer.put(record)
    return (await done)[0], record.found


async def test_compaction_is_exact_across_a_restart_between_its_steps(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    generated = list(reading_rows(3, T0, T0 + 5 * HOUR, 30))
    want = sorted((d, ts, rx, json.loads(m)) for d, ts, rx, m, _ in generated)
    now = T0 + 5 * HOUR
    async with running_store(path, POLICY, clock=ManualClock(now)) as store:
        insert_readings(path, generated)
        await store.lifecycle.catch_up()
        _, plan = await step(store, "compact_plan", now - 2 * HOUR, 0)
        assert plan[1:] == [(T0 + h * HOUR, f"AP-00{d}") for h in range(3) for d in range(3)]
        assert await step(store, "compact", 0, 1, plan[0], plan[1:]) == (120, [1])  # one device-hour, then stopped
        # its rows are in the block and still rows (covered): each reading read once
        assert sorted(all_readings(path)) == want
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == len(generated)
        db.close()
    late = Reading("AP-002", T0 + 10.5, {"pm25": 8.0}, now)  # into an hour the first run began
    current = Reading("AP-001", now, {"pm25": 9.0}, now)
    async with running_store(path, POLICY, clock=ManualClock(now)) as store:
        await store.writer.put(late)
        await store.writer.put(current)
        await store.writer.flush()
        report = await store.lifecycle.run_pass()
    assert report.compacted == 3 * 3 * 120 - 120 + 1
    want += [(r.device_id, r.ts, r.received_at, r.metrics) for r in (late, current)]
    assert sorted(all_readings(path)) == sorted(want)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT sum(count), count(*) FROM reading_hours").fetchone() == (3 * 3 * 120 + 1, 9)
        assert db.execute("SELECT count(*) FROM readings WHERE ts < ?", (now - 2 * HOUR,)).fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM compaction_wave").fetchone()[0] == 0
        # the rollups held every reading once, the late one included
        assert db.execute("SELECT sum(count) FROM rollup_hourly WHERE metric = ''").fetchone()[0] == len(want)
    db.close()


async def test_what_waits_in_the_outbox_is_never_touched_by_compaction(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with running_store(path, POLICY, outbox=True) as store:
        for device, ts, received, _, _ in reading_rows(2, T0, T0 + 4 * HOUR, 60):
            await store.writer.put(Reading(device, ts, metrics_of(int(device[3:]), ts), received))
        await store.writer.flush()
        with sqlite3.connect(path) as db:
            outbox = db.execute("SELECT * FROM outbox ORDER BY seq").fetchall()
        store.clock.advance(4 * HOUR)
        report = await store.lifecycle.run_pass()
    assert report.compacted == 2 * 2 * 60
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT * FROM outbox ORDER BY seq").fetchall() == outbox  # every row, as it was
    assert len(outbox) == 2 * 4 * 60 and len(all_readings(path)) == len(outbox)


async def test_a_database_of_an_earlier_schema_migrates_and_keeps_its_readings(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        for version, script in enumerate(MIGRATIONS[:6]):
            db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version + 1};\nCOMMIT;")
        db.execute("INSERT INTO readings (device_id, ts, received_at, metrics) VALUES ('AP-000', ?, ?, '{\"pm25\":1}')",
                   (T0, T0))
    db.close()
    async with running_store(path):
        pass
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT count(*) FROM reading_hours").fetchone()[0] == 0
    db.close()
    assert all_readings(path) == [("AP-000", T0, T0, {"pm25": 1})]


@pytest.mark.parametrize("cutoff_offset", [0.0, 1800.0])
async def test_retention_deletes_compacted_hours_whole_and_cuts_the_hour_its_cutoff_falls_in(
    tmp_path: Path, cutoff_offset: float
) -> None:
    path = tmp_path / "g.db"
    async with running_store(path, POLICY, clock=ManualClock(T0 + 6 * HOUR)) as store:
        insert_readings(path, reading_rows(2, T0, T0 + 6 * HOUR, 60))
        await store.lifecycle.run_pass()  # compacts the first 4 hours
        cutoff = T0 + 2 * HOUR + cutoff_offset
        total = 0
        while removed := (await step(store, "expire", cutoff, 100))[0]:
            total += removed
    kept = all_readings(path)
    assert total == 2 * (120 + cutoff_offset / 60) and min(ts for _, ts, _, _ in kept) >= cutoff
    assert len(kept) == 2 * 6 * 60 - total


async def test_the_newest_row_stays_a_row_so_the_next_reading_is_still_rolled_up(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with running_store(path, POLICY, clock=ManualClock(T0 + 5 * HOUR)) as store:
        insert_readings(path, reading_rows(1, T0, T0 + HOUR, 60))  # then silent
        report = await store.lifecycle.run_pass()
        assert report.compacted == 59  # all but the newest row
        await store.writer.put(Reading("AP-000", T0 + 5 * HOUR, {"pm25": 1.0}, T0 + 5 * HOUR))
        await store.writer.flush()
        await store.lifecycle.catch_up()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT sum(count) FROM rollup_hourly WHERE metric = ''").fetchone()[0] == 61
    db.close()


async def test_a_wave_takes_every_device_of_its_hours_then_deletes_their_rows_once(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    actions: list[str] = []
    async with running_store(path, POLICY, clock=ManualClock(T0 + 5 * HOUR)) as store:
        insert_readings(path, reading_rows(3, T0, T0 + 5 * HOUR, 60))

        async def counted(record: Any) -> None:
            actions.append(record.action)
            await store.writer.put(record)

        lifecycle = DataLifecycle(POLICY, put=counted, clock=store.clock, metrics=store.metrics)
        await lifecycle.catch_up()
        actions.clear()
        assert await lifecycle.compact(T0 + 3 * HOUR) == 3 * 3 * 60
    # leftovers (none), one wave of the 3 hours x 3 devices, its deletes, then a plan that finds nothing
    assert actions[0] == "drop_covered" and actions.count("compact_plan") == 2
    assert actions.index("drop_covered", 1) > max(i for i, a in enumerate(actions) if a == "compact")


async def test_a_block_that_does_not_decode_is_skipped_at_start_and_named_in_one_error(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    async with running_store(path, POLICY) as store:
        insert_readings(path, [(QUIET, T0 + 100.5 + k, T0 + 101.0 + k, compact_json(metrics_of(9, T0 + k)), None)
                               for k in range(3)])
        insert_readings(path, reading_rows(1, T0, T0 + 4 * HOUR, 60))
        store.clock.advance(4 * HOUR)
        await store.lifecycle.run_pass()
    with sqlite3.connect(path) as db:
        [(data,)] = db.execute("SELECT data FROM reading_hours WHERE device_id = ?", (QUIET,)).fetchall()
        db.execute("UPDATE reading_hours SET data = ? WHERE device_id = ?", (data[: len(data) // 2], QUIET))
    with pytest.raises(CorruptBlockError, match="does not decode: error"):
        decode(data[: len(data) // 2])
    with pytest.raises(CorruptBlockError, match="version"):
        decode(b"\x7f" + data[1:])
    conn = await read_queries.open_reader(path)
    try:  # the resend memory's load at start: the damaged block is left out, the others are read
        recent = await queries.load_recent_readings(conn, ("AP-000", QUIET), 64)
    finally:
        await conn.close()
    assert {d for d, *_ in recent} == {"AP-000"} and len(recent) == 64


class _CompactedBeforeBlocksAreRead:
    """A reader's connection; just before its first read of the blocks, a compaction step commits on another
    connection (what the store writer does beside the API's reader)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self._path = path
        self.compacted = 0

    def execute(self, sql: str, params: Any = ()) -> Any:
        if "reading_hours" in sql and not self.compacted:
            other = sqlite3.connect(self._path, isolation_level=None)
            try:
                found = plan_wave(other, T0 + 3 * HOUR)
                self.compacted, _ = compact_hours(other, found[1:], found[0], 10**6)
            finally:
                other.close()
        return self.db.execute(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction


def _three_rolled_up_hours(tmp_path: Path) -> Path:
    """A WAL database (as the store writer opens it: readers beside a writer) with 3 hours of one device, all
    folded into the rollups: compaction may move them."""
    path = tmp_path / "g.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for sql in MIGRATIONS:
            db.executescript(sql)
    insert_readings(path, reading_rows(1, T0, T0 + 3 * HOUR, 60))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE rollup_state SET readings_through = (SELECT max(id) FROM readings)")
    return path


def test_a_read_of_rows_and_blocks_is_one_snapshot_while_compaction_commits_beside_it(tmp_path: Path) -> None:
    path = _three_rolled_up_hours(tmp_path)
    reader = _CompactedBeforeBlocksAreRead(path)
    try:
        db = cast(sqlite3.Connection, reader)
        lo, hi = T0, T0 + 3 * HOUR
        got = raw_readings.in_read_transaction(db, partial(raw_readings.newest, db, "AP-000", lo, hi, 500))
        stats = raw_readings.in_read_transaction(db, partial(read_queries.metric_statistics_now, db, "AP-000", lo, hi))
    finally:
        reader.db.close()
    assert reader.compacted == 3 * 60 - 1  # all but the newest row, moved between the two reads of `newest`
    assert len(got) == len({ts for ts, *_ in got}) == 3 * 60
    assert stats["readings"] == 3 * 60


def test_device_entries_read_rows_and_blocks_in_one_snapshot(tmp_path: Path) -> None:
    path = _three_rolled_up_hours(tmp_path)
    reader = _CompactedBeforeBlocksAreRead(path)
    try:
        entries = raw_readings.device_entries(cast(sqlite3.Connection, reader), "AP-000", T0, T0 + 3 * HOUR)
    finally:
        reader.db.close()
    assert reader.compacted and len(entries) == 3 * 60


async def test_a_late_reading_in_a_compacted_hour_is_read_after_retention_took_the_newest_row(tmp_path: Path) -> None:
    """Readings' ids are max(id) + 1, and a block hides the rows of its device-hour up to its `through`: the
    newest row must outlive retention, or a later reading may take an id a block covers and never be read."""
    path = tmp_path / "g.db"
    async with running_store(path, POLICY, clock=ManualClock(T0 + 5 * HOUR)) as store:
        insert_readings(path, reading_rows(1, T0, T0 + HOUR, 60))
        # the newest row, dated before the raw window (a device with a wrong clock): retention's to delete
        insert_readings(path, [("AP-001", T0 - 100 * 86400.0, T0 + HOUR, '{"pm25":1.0}', None)])
        report = await store.lifecycle.run_pass()
        assert report.compacted == 60
        await store.writer.put(Reading("AP-000", T0 + 30.5, {"pm25": 2.5}, T0 + 5 * HOUR))  # late, a compacted hour
        await store.writer.flush()
        conn = await read_queries.open_reader(path)
        try:
            rows = await read_queries.readings(conn, "AP-000", start=T0, end=T0 + HOUR, limit=1000)
        finally:
            await conn.close()
    assert len(rows) == 61 and any(r["metrics"] == {"pm25": 2.5} for r in rows)
