"""Data lifecycle benchmark: history reads over rollups, retention beside ingest, bytes written per reading.

    .venv/bin/python -m tests.bench.bench_lifecycle            # a week of 100 devices (6 M readings), minutes
    .venv/bin/python -m tests.bench.bench_lifecycle --smoke    # seconds; what the test suite runs

Prints (asserts nothing about time):
  * history: a week of 100 devices at 1 reading / 10 s and 90 days of one more, generated once straight into
    SQLite, folded into the rollups by the real catch-up and compacted into device-hours as the daemon's
    pass does (their rates printed); then week statistics and a 7 x 24-point series for one device and for all
    100, 90 days of statistics for one device (auto resolution: exact, rollups inside, raw readings at the
    ends), and the week's statistics from raw readings to compare;
  * retention beside ingest: readings put at 1,000/s through the store writer (WAL checkpoints beside it, as
    in the daemon) while retention deletes a compacted day of 100 devices: put -> committed p50/p99 (the
    store's part of publish -> committed), with and without;
  * writes: bytes written per reading (/proc/self/io write_bytes, the storage layer) for 100 devices x 1
    reading / 10 s with the outbox on, for commits of 1 reading (idle_linger_ms 0), of 10 (1,000) and more,
    pages of 4, 2 and 1 KiB, the rollups' catch-up and a final WAL checkpoint included, plus what compacting
    the readings writes; the row's own size; the card wear in GB/day; put -> committed by idle_linger_ms;
  * the steady-state database size for 100 devices at the default windows, from the bytes per compacted
    reading (and per noisy one) and per rollup row measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sqlite3
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from gateway.core.clock import ManualClock
from gateway.core.metrics import Metrics
from gateway.core.models import Reading
from gateway.settings_retention import RetentionSection
from gateway.store import history, reading_blocks
from gateway.store.checkpoints import BACKSTOP_PAGES, WalCheckpointer
from gateway.store.lifecycle import DataLifecycle
from gateway.store.read_queries import open_reader
from gateway.store.writer import StoreWriter
from tests.bench.common import percentile, run_and_report
from tests.fixtures.lifecycle import T0, insert_readings, metrics_of, reading_rows

DAY = 86400.0
READINGS_PER_DAY = 8640  # one every 10 s


async def timed(n: int, call: Any) -> float:
    """Median milliseconds of `n` awaits of call()."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


def fill(path: Path, devices: int, days: float, interval: float, start: float, device_base: int = 0) -> int:
    total = 0
    for day in range(int(days)):  # a transaction per day keeps the generator's memory small
        rows = ((f"AP-{int(d[3:]) + device_base:03d}", *rest) for d, *rest in
                reading_rows(devices, start + day * DAY, start + (day + 1) * DAY, interval))
        total += insert_readings(path, rows)
    return total


async def history_reads(folder: Path, devices: int, days: int, long_days: int, interval: float) -> dict[str, float]:
    path = folder / "history.db"
    clock = ManualClock(T0 + long_days * DAY)
    metrics = Metrics()
    writer = StoreWriter(path, metrics=metrics, clock=clock)
    await writer.open()
    task = asyncio.create_task(writer.run())
    policy = RetentionSection(pause_ms=0, rollup_batch_readings=20_000, step_target_ms=1000)
    lifecycle = DataLifecycle(policy, put=writer.put, clock=clock, metrics=metrics)
    t0 = time.perf_counter()
    generated = fill(path, devices, days, interval, T0 + (long_days - days) * DAY)
    generated += fill(path, 1, long_days, interval, T0, device_base=devices)  # the long-lived device
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    folded = await lifecycle.catch_up()
    fold_s = time.perf_counter() - t0
    sizes = stored_bytes(path, "readings")
    t0 = time.perf_counter()
    compacted = await lifecycle.compact(clock.now() - policy.compact_after_hours * 3600)  # as the daemon's pass
    compact_s = time.perf_counter() - t0
    sizes.update(stored_bytes(path, "reading_hours"))
    await writer.close()
    await task
    conn = await open_reader(path)
    end = T0 + long_days * DAY - 1234.5  # not aligned: raw readings at both ends
    week = (end - days * DAY, end)
    windows = history.Windows.of(policy, clock.now())
    ids = [f"AP-{d:03d}" for d in range(devices)]
    longest = f"AP-{devices:03d}"
    try:
        async def all_devices(read: Any) -> None:
            for device in ids:
                await read(device)

        async def stats(device: str, resolution: str = "auto") -> None:
            await history.statistics(conn, device, *week, resolution, windows)

        async def series(device: str) -> None:
            found = await history.series(conn, device, "pm25", *week, 3600, "auto", windows)
            assert len(found["points"]) >= days * 24

        return {
            **sizes, "compacted_readings": float(compacted), "compact_readings_per_s": compacted / compact_s,
            "generated_readings": float(generated), "generate_s": gen_s, "catch_up_readings_per_s": folded / fold_s,
            "week_stats_one_ms": await timed(9, lambda: stats(ids[0])),
            "week_series_one_ms": await timed(9, lambda: series(ids[0])),
            "week_stats_all_ms": await timed(3, lambda: all_devices(stats)),
            "week_series_all_ms": await timed(3, lambda: all_devices(series)),
            "days90_stats_one_ms": await timed(9, lambda: history.statistics(
                conn, longest, T0 + 999.0, end, "auto", windows)),
            "week_stats_one_raw_ms": await timed(3, lambda: stats(ids[0], "raw")),
        }
    finally:
        await conn.close()


async def retention_beside_ingest(folder: Path, devices: int, rate: int, seconds: float) -> dict[str, float]:
    """Put `rate` readings/s for `seconds` twice: alone, then while retention deletes a day of `devices`."""
    path = folder / "retention.db"
    clock = ManualClock(T0 + 100 * DAY)
    metrics = Metrics()
    # As the daemon runs it (app.py): WAL checkpoints beside the writer, the production batch and queue sizes.
    writer = StoreWriter(path, metrics=metrics, clock=clock, max_batch=250, queue_size=250, outbox=True,
                         wal_autocheckpoint=BACKSTOP_PAGES)
    await writer.open()
    task = asyncio.create_task(writer.run())
    checkpoints = asyncio.create_task(WalCheckpointer(path, metrics=metrics).run())
    lifecycle = DataLifecycle(RetentionSection(), put=writer.put, clock=clock, metrics=metrics)
    expired = fill(path, devices, 1, 10.0, T0)  # a day past the 90-day window
    # The day's state in a running daemon (folded, long since compacted), reached in big steps without pauses:
    # with the production pacing (steps of ~2 ms, 50 ms apart) the setup alone took a minute.
    setup = DataLifecycle(RetentionSection(pause_ms=0, step_target_ms=1000, rollup_batch_readings=20_000),
                          put=writer.put, clock=clock, metrics=metrics)
    await setup.catch_up()
    await setup.compact(T0 + DAY)
    loop = asyncio.get_running_loop()
    out: dict[str, float] = {"retention_deleted": float(expired)}

    async def ingest(label: str, during: asyncio.Task[Any] | None) -> None:
        latencies: list[float] = []

        def committed(t_put: float, _: object) -> None:
            latencies.append(loop.time() - t_put)

        start, sent = loop.time(), 0
        while loop.time() - start < seconds or (during is not None and not during.done()):
            due = int((loop.time() - start) * rate)
            for _ in range(due - sent):
                ts = T0 + 100 * DAY + sent * 0.001
                t_put = loop.time()  # before put(): a full queue's wait counts
                await writer.put(Reading(f"AP-{sent % devices:03d}", ts, metrics_of(sent % devices, ts), ts))
                receipt = writer.receipt()
                if receipt is not None:
                    receipt.add_done_callback(partial(committed, t_put))
                sent += 1
            await asyncio.sleep(0.002)
        await writer.flush()
        out[f"{label}_p50_ms"] = percentile(latencies, 50) * 1000
        out[f"{label}_p99_ms"] = percentile(latencies, 99) * 1000
        out[f"{label}_readings"] = float(sent)

    await ingest("ingest_alone", None)
    t0 = time.perf_counter()
    retention = asyncio.create_task(lifecycle.run_pass())
    await ingest("ingest_with_retention", retention)
    report = await retention
    out["retention_s"] = time.perf_counter() - t0
    out["retention_rows_per_s"] = report.expired.get("readings", 0) / out["retention_s"]
    for action, figures in lifecycle.holds.summary().items():  # what each kind of step held the writer
        for key, value in figures.items():
            out[f"hold_{action}_{key}"] = value
    checkpoints.cancel()
    await asyncio.gather(checkpoints, return_exceptions=True)
    await writer.close()
    await task
    with sqlite3.connect(path) as db:
        kept = db.execute("SELECT count(*) FROM readings").fetchone()[0]
    out["ingest_lost"] = out["ingest_alone_readings"] + out["ingest_with_retention_readings"] - kept
    return out


def proc_io() -> dict[str, int]:
    text = Path("/proc/self/io").read_text()
    return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}


def create_database(path: Path, page_size: int) -> None:
    """A new database file with this page size (and incremental auto-vacuum, as schema.connect makes one)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(f"PRAGMA page_size={page_size}")
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("CREATE TABLE header_written (x)")  # the page size holds from the first write on
        db.execute("DROP TABLE header_written")
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()


async def write_cost(folder: Path, per_commit: int, readings: int, outbox: bool,
                     page_size: int) -> dict[str, float]:
    """Bytes written per reading, 100 devices, `per_commit` readings per commit, the catch-up every 600, the WAL
    checkpointed at the end; then the bytes that compacting them writes, per reading."""
    path = folder / f"writes-{per_commit}-{outbox}-{page_size}.db"
    create_database(path, page_size)
    clock = ManualClock(T0)
    metrics = Metrics()
    writer = StoreWriter(path, metrics=metrics, clock=clock, outbox=outbox)
    await writer.open()
    task = asyncio.create_task(writer.run())
    # production step sizes; no pauses between steps (they change no byte written)
    lifecycle = DataLifecycle(RetentionSection(pause_ms=0), put=writer.put, clock=clock, metrics=metrics)
    warm = min(2000, readings)  # fill the first pages, so the figures are a running database's
    for i in range(warm + readings):
        if i == warm:
            await writer.flush()
            await lifecycle.catch_up()
            before = proc_io()
        ts = T0 + i * 0.1
        await writer.put(Reading(f"AP-{i % 100:03d}", ts, metrics_of(i % 100, ts), ts + 0.01))
        if i % per_commit == per_commit - 1:
            await writer.flush()
        if i % 600 == 599:
            await lifecycle.catch_up()  # once a minute at 10 readings/s
    await writer.flush()
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT avg(length(device_id) + length(metrics) + 8 + 8 + 8) FROM readings").fetchone()
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    after = proc_io()
    await lifecycle.catch_up()
    compacted = await lifecycle.compact(T0 + (warm + readings) * 0.1 + 3600)  # every reading, once
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    compacting = proc_io()
    await writer.close()
    await task
    wrote = after["write_bytes"] - before["write_bytes"]
    return {"bytes_per_reading": wrote / readings, "wchar_per_reading": (after["wchar"] - before["wchar"]) / readings,
            "row_bytes": float(row[0]),
            "compaction_bytes_per_reading": (compacting["write_bytes"] - after["write_bytes"]) / compacted}


async def linger_latency(folder: Path, linger_s: float, seconds: float) -> dict[str, float]:
    """put -> committed at 100 devices x 1 reading / 10 s (10 a second, evenly) with `idle_linger` = linger_s:
    what commit grouping costs a device in PUBACK delay."""
    path = folder / f"linger-{linger_s}.db"
    writer = StoreWriter(path, metrics=Metrics(), clock=ManualClock(T0), outbox=True, idle_linger=linger_s)
    await writer.open()
    task = asyncio.create_task(writer.run())
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    def committed(t_put: float, _: object) -> None:
        latencies.append(loop.time() - t_put)

    start = loop.time()
    for i in range(int(seconds * 10)):
        await asyncio.sleep(max(0.0, start + i * 0.1 - loop.time()))
        ts = T0 + i * 0.1
        t_put = loop.time()
        await writer.put(Reading(f"AP-{i % 100:03d}", ts, metrics_of(i % 100, ts), ts))
        receipt = writer.receipt()
        if receipt is not None:
            receipt.add_done_callback(partial(committed, t_put))
    await writer.flush()
    await writer.close()
    await task
    return {"p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000}


def stored_bytes(path: Path, table: str) -> dict[str, float]:
    """Bytes on disk per reading of `table` (its pages and its indexes' pages, dbstat) and how many readings."""
    with sqlite3.connect(path) as db:
        used = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ? OR name IN"
                          " (SELECT name FROM sqlite_master WHERE tbl_name = ? AND type = 'index')",
                          (table, table)).fetchone()[0] or 0.0
        count = db.execute("SELECT count(*) FROM readings" if table == "readings"
                           else "SELECT coalesce(sum(count), 0), coalesce(sum(length(data)), 0) FROM reading_hours"
                           ).fetchone()
        out = {f"{table}_stored_bytes_per_reading": float(used) / max(1, count[0])}
        if table == "reading_hours":
            out["block_bytes_per_reading"] = float(count[1]) / max(1, count[0])  # the compact values alone
        return out


def noisy_block_bytes() -> float:
    """Bytes per reading of an hour of a noisy purifier: values at their sensors' resolutions jumping by noise
    (not the smooth curves of metrics_of), arrival times from a real clock (no decimal form)."""
    rng = random.Random(1)
    entries = []
    for k in range(360):
        ts = T0 + k * 10.0 + round(rng.uniform(0, 0.999), 3)  # a device's millisecond time
        smooth = metrics_of(0, ts)
        noisy = {"pm25": max(0, int(smooth["pm25"] + rng.gauss(0, 3))), "pm10": max(0, int(smooth["pm10"] +
                 rng.gauss(0, 4))), "temperature": round(smooth["temperature"] + rng.gauss(0, 0.2), 2),
                 "humidity": round(smooth["humidity"] + rng.gauss(0, 1), 1), "voc": int(smooth["voc"] +
                 rng.gauss(0, 10)), "fanSpeed": smooth["fanSpeed"], "powerOn": smooth["powerOn"]}
        entries.append((ts, ts + rng.uniform(0.001, 0.05), noisy, None))
    return len(reading_blocks.encode(entries)) / len(entries)


def steady_state_gb(folder: Path, r: dict[str, Any]) -> dict[str, float]:
    """The database of 100 devices at the default windows, from the bytes per stored reading (compacted, and
    compacted as noisy readings would be) and per rollup row measured in the history database. The raw readings'
    last `compact_after_hours` and the outbox are left out (a few MB)."""
    with sqlite3.connect(folder / "history.db") as db:
        def table_bytes(name: str) -> float:
            rows = db.execute("SELECT sum(pgsize) FROM dbstat WHERE name = ? OR name IN"
                              " (SELECT name FROM sqlite_master WHERE tbl_name = ? AND type = 'index')",
                              (name, name)).fetchone()
            return float(rows[0] or 0.0)
        hourly = db.execute("SELECT count(*) FROM rollup_hourly").fetchone()[0]
        daily = db.execute("SELECT count(*) FROM rollup_daily").fetchone()[0]
        per_hourly = table_bytes("rollup_hourly") / hourly
        per_daily = table_bytes("rollup_daily") / daily
    p = RetentionSection()
    rollup_rows_per_bucket = 8  # 7 numeric metrics of a purifier, and the reading count
    raw_readings = 100 * READINGS_PER_DAY * p.readings_days
    hours = 100 * 24 * p.rollup_hourly_days * rollup_rows_per_bucket * per_hourly
    days = 100 * p.rollup_daily_days * rollup_rows_per_bucket * per_daily
    compacted = r["reading_hours_stored_bytes_per_reading"]
    noisy = compacted - r["block_bytes_per_reading"] + r["noisy_block_bytes_per_reading"]
    return {"bytes_per_hourly_row": per_hourly, "rollups_gb": (hours + days) / 1e9,
            "steady_state_gb": (raw_readings * compacted + hours + days) / 1e9,
            "steady_state_noisy_gb": (raw_readings * noisy + hours + days) / 1e9,
            "steady_state_rows_gb": (raw_readings * r["readings_stored_bytes_per_reading"] + hours + days) / 1e9,
            "noisy_stored_bytes_per_reading": noisy, "readings_90_days": float(raw_readings)}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    if args.smoke:
        devices, days, long_days, rate, seconds, write_readings = 3, 1, 2, 1000, 1.0, 300
        lingers: tuple[float, ...] = (1.0,)
        linger_s = 2.0
    else:
        devices, days, long_days, rate, seconds, write_readings = 100, 7, 90, 1000, 5.0, 12_000
        lingers, linger_s = (0.0, 0.25, 1.0, 5.0), 20.0
    results: dict[str, Any] = {"devices": devices, "days": days, "smoke": args.smoke}
    with tempfile.TemporaryDirectory(prefix="bench-lifecycle-", dir=args.dir) as tmp:
        folder = Path(tmp)
        results.update(await history_reads(folder, devices, days, long_days, 10.0))
        results["noisy_block_bytes_per_reading"] = noisy_block_bytes()
        results.update(steady_state_gb(folder, results))
        results.update(await retention_beside_ingest(folder, devices, rate, seconds))
        for name, per_commit, outbox, page_size in (SMOKE_WRITE_CASES if args.smoke else WRITE_CASES):
            for key, value in (await write_cost(folder, per_commit, write_readings, outbox, page_size)).items():
                results[f"{key}_{name}"] = value
            results[f"total_bytes_per_reading_{name}"] = (results[f"bytes_per_reading_{name}"]
                                                          + results[f"compaction_bytes_per_reading_{name}"])
            results[f"gb_per_day_{name}"] = results[f"total_bytes_per_reading_{name}"] * 100 * READINGS_PER_DAY / 1e9
        for linger in lingers:
            for key, value in (await linger_latency(folder, linger, linger_s)).items():
                results[f"linger_{int(linger * 1000)}_{key}"] = value
    return results


# (name, readings per commit, outbox on, page size): idle_linger_ms 0 commits each reading of 100 devices x 1 / 10 s
# alone; 1,000 groups ~10; 5,000 (its maximum) ~50; 100 would take a linger of 10 s.
WRITE_CASES = (("commit_1", 1, True, 4096), ("commit_10", 10, True, 4096), ("commit_10_no_outbox", 10, False, 4096),
               ("commit_100", 100, True, 4096), ("commit_10_p2048", 10, True, 2048),
               ("commit_10_p1024", 10, True, 1024), ("commit_50_p1024", 50, True, 1024),
               ("commit_50_p4096", 50, True, 4096))
SMOKE_WRITE_CASES = WRITE_CASES[:2] + WRITE_CASES[5:6]  # the suite's time: commits of 1, 10; 1 KiB pages


def holds(r: dict[str, Any]) -> str:
    actions = [k[len("hold_"):-len("_steps")] for k in r if k.startswith("hold_") and k.endswith("_steps")]
    return ", ".join(f"{a} {r[f'hold_{a}_p50_ms']:.1f}/{r[f'hold_{a}_p99_ms']:.1f}/{r[f'hold_{a}_max_ms']:.1f} "
                     f"({r[f'hold_{a}_steps']:.0f})" for a in actions)


def report(r: dict[str, Any]) -> str:
    def writes(name: str) -> str:
        if f"bytes_per_reading_{name}" not in r:
            return "(not in the smoke run)"
        return (f"{r[f'bytes_per_reading_{name}']:,.0f} + {r[f'compaction_bytes_per_reading_{name}']:,.0f} "
                f"({r[f'gb_per_day_{name}']:.2f} GB/day)")

    lingers = ", ".join(f"{k.split('_')[1]} ms: {r[k]:.0f}/{r[k.replace('p50', 'p99')]:.0f} ms"
                        for k in r if k.startswith("linger_") and k.endswith("_p50_ms"))
    return "\n".join([
        f"history over {r['days']} days of {r['devices']} devices ({r['generated_readings']:,.0f} readings generated "
        f"in {r['generate_s']:.0f} s, rollups caught up at {r['catch_up_readings_per_s']:,.0f} readings/s, "
        f"{r['compacted_readings']:,.0f} compacted at {r['compact_readings_per_s']:,.0f} readings/s):",
        f"  week statistics: one device {r['week_stats_one_ms']:.1f} ms (raw readings only: "
        f"{r['week_stats_one_raw_ms']:.0f} ms), all devices {r['week_stats_all_ms']:.0f} ms",
        f"  week series of 7 x 24 points: one device {r['week_series_one_ms']:.1f} ms, all devices "
        f"{r['week_series_all_ms']:.0f} ms; 90 days of statistics, one device {r['days90_stats_one_ms']:.1f} ms",
        f"retention beside ingest: {r['retention_deleted']:,.0f} compacted readings deleted in "
        f"{r['retention_s']:.1f} s "
        f"({r['retention_rows_per_s']:,.0f}/s); put -> committed p50/p99 alone {r['ingest_alone_p50_ms']:.1f}/"
        f"{r['ingest_alone_p99_ms']:.1f} ms, with retention {r['ingest_with_retention_p50_ms']:.1f}/"
        f"{r['ingest_with_retention_p99_ms']:.1f} ms; lost {r['ingest_lost']:.0f}",
        f"  the pass's steps held the writer (p50/p99/max ms, steps): {holds(r)}",
        f"writes, 100 devices x 1 reading/10 s (a row is {r['row_bytes_commit_1']:.0f} B), bytes written per "
        f"reading as a row + compacting it, outbox on: commits of 1 {writes('commit_1')}, of 10 {writes('commit_10')}"
        f", of 50 {writes('commit_50_p4096')}, of 100 {writes('commit_100')}; outbox off, of 10: "
        f"{writes('commit_10_no_outbox')}",
        f"  pages of 2 KiB, commits of 10: {writes('commit_10_p2048')}; 1 KiB: {writes('commit_10_p1024')}, "
        f"commits of 50: {writes('commit_50_p1024')}",
        f"  put -> committed p50/p99 by idle_linger_ms at this rate: {lingers}",
        f"steady state, 100 devices at the default windows ({r['readings_90_days'] / 1e6:.1f} M raw readings): "
        f"{r['steady_state_gb']:.2f} GB (compacted readings {r['reading_hours_stored_bytes_per_reading']:.1f} B each "
        f"all in, of which the compact value {r['block_bytes_per_reading']:.1f} B; rollups {r['rollups_gb']:.2f} GB); "
        f"noisy readings ({r['noisy_block_bytes_per_reading']:.1f} B compact, {r['noisy_stored_bytes_per_reading']:.1f}"
        f" B all in) {r['steady_state_noisy_gb']:.2f} GB; as rows ({r['readings_stored_bytes_per_reading']:.0f} B each)"
        f" it would be {r['steady_state_rows_gb']:.1f} GB",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (the test suite's)")
    parser.add_argument("--dir", type=Path, help="where the databases go (a disk, for write_bytes)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    run_and_report(parser.parse_args(), bench, report)


if __name__ == "__main__":
    main()
