"""Store writer benchmark: the StoreWriter alone on a SQLite file (no broker, no network).

    .venv/bin/python -m tests.bench.bench_store            # 3 rounds, ~1 min
    .venv/bin/python -m tests.bench.bench_store --smoke    # seconds; what the test suite runs

Uses only the writer's public API (open, put, receipt, flush, close, run), so the same file measures
any version of the writer. Prints (asserts nothing about time), per round and their median:
  * flat out: committed readings/s, one producer putting readings of 10 metrics as fast as the writer
    takes them (a receipt per reading, as ingest asks for its QoS 1 PUBACK), with a quarantined payload
    and two device events per 100 readings, outbox on (batches: the worker-thread commit path);
  * trickle: process CPU microseconds per reading, one reading at a time after a quiet spell (the
    inline commit path), and the same for a trickle of a status change with its event.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import structlog

from gateway.core.metrics import Metrics
from gateway.core.models import DeviceEvent, Quarantined, Reading, StatusChange, StoreRecord
from gateway.store.writer import StoreWriter
from tests.bench.common import run_and_report

METRICS = ("pm25", "pm10", "pm1", "temperature", "humidity", "co2", "voc", "fanSpeed", "filterLife", "power")
T0 = 1763800000.0


def reading(i: int, devices: int = 100) -> Reading:
    values: dict[str, float | int | bool] = {name: round(i * 0.37 + k, 2) for k, name in enumerate(METRICS[:-2])}
    values["filterLife"] = 97
    values["power"] = i % 2 == 0
    return Reading(f"AP-{i % devices:03d}", T0 + i * 0.01, values, T0 + i * 0.01 + 0.005)


def mixed(i: int) -> list[StoreRecord]:
    """Reading i, and for every 100th a quarantined payload and two device events."""
    records: list[StoreRecord] = [reading(i)]
    if i % 100 == 50:
        device = f"AP-{i % 100:03d}"
        payload = b'{"pm25": "it\'s not a number", "note": "-- ; DROP"}' * 4
        records.append(Quarantined(T0 + i, device, f"device/{device}/data", payload, "invalid metric", device))
        records.append(DeviceEvent(T0 + i, device, "filter.warning", {"filterLife": 9, "note": "it's low"}))
        records.append(DeviceEvent(T0 + i, device, "fan.changed", {"fanSpeed": i % 6}))
    return records


def writer_for(path: Path, metrics: Metrics) -> StoreWriter:
    # The production defaults (settings.StorageSection), with the outbox of an enabled uplink.
    return StoreWriter(path, metrics=metrics, commit_interval=0.005, max_batch=250, queue_size=250, outbox=True)


async def flat_out(folder: Path, readings: int) -> dict[str, float]:
    metrics = Metrics()
    writer = writer_for(folder / "flat.db", metrics)
    await writer.open()
    task = asyncio.create_task(writer.run())
    records = [rec for i in range(readings) for rec in mixed(i)]  # built before the clock starts
    loop = asyncio.get_running_loop()
    cpu0, t0 = time.process_time(), loop.time()
    put, receipt = writer.put, writer.receipt
    for rec in records:
        await put(rec)
        receipt()
    await writer.flush()
    elapsed, cpu = loop.time() - t0, time.process_time() - cpu0
    commits = metrics.value("gateway_store_commits_total")
    await writer.close()
    await task
    return {
        "rate": readings / elapsed,
        "cpu_us_per_reading": cpu / readings * 1e6,
        "records_per_commit": len(records) / commits if commits else float("nan"),
    }


async def trickle(folder: Path, steps: int, make: Any, name: str) -> float:
    """Process CPU microseconds per step: put one step's records, wait for its commit, stay quiet a while."""
    metrics = Metrics()
    writer = writer_for(folder / f"{name}.db", metrics)
    await writer.open()
    task = asyncio.create_task(writer.run())
    for i in range(3):  # warm-up: statement caches, first pages
        for rec in make(i):
            await writer.put(rec)
        await writer.flush()
        await asyncio.sleep(0.05)
    cpu0 = time.process_time()
    for i in range(3, steps + 3):
        for rec in make(i):
            await writer.put(rec)
        await writer.flush()
        await asyncio.sleep(0.05)  # > 4 commit intervals: the next one is a trickle again
    cpu = time.process_time() - cpu0
    await writer.close()
    await task
    return cpu / steps * 1e6


def status_step(i: int) -> list[StoreRecord]:
    device = f"AP-{i % 10:03d}"
    return [StatusChange(device, i % 2 == 0, T0 + i, "status"),
            DeviceEvent(T0 + i, device, "fan.changed", {"fanSpeed": i % 6})]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    readings, steps, rounds = (2_000, 20, 1) if args.smoke else (args.readings, args.steps, args.rounds)
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            folder = Path(tmp)
            figures = await flat_out(folder, readings)
            figures["trickle_cpu_us_per_reading"] = await trickle(folder, steps, lambda i: [reading(i)], "trickle")
            figures["trickle_status_cpu_us_per_step"] = await trickle(folder, steps, status_step, "status")
        per_round.append(figures)
    results: dict[str, Any] = {"readings": readings, "trickle_steps": steps, "rounds": per_round}
    for key in per_round[0]:
        results[key] = float(statistics.median(r[key] for r in per_round))
    return results


def report(r: dict[str, Any]) -> str:
    lines = [f"store writer alone, {r['readings']:,} readings flat out, {r['trickle_steps']} trickle steps, "
             f"{len(r['rounds'])} round(s)"]
    for n, figures in enumerate(r["rounds"], 1):
        lines.append(f"  round {n}: flat out {figures['rate']:,.0f} readings/s "
                     f"({figures['cpu_us_per_reading']:.1f} us CPU/reading, "
                     f"{figures['records_per_commit']:.0f} records/commit); trickle "
                     f"{figures['trickle_cpu_us_per_reading']:.0f} us CPU/reading, status+event "
                     f"{figures['trickle_status_cpu_us_per_step']:.0f} us CPU/step")
    lines.append(f"median: flat out {r['rate']:,.0f} readings/s, {r['cpu_us_per_reading']:.1f} us CPU/reading; "
                 f"trickle {r['trickle_cpu_us_per_reading']:.0f} us CPU/reading, "
                 f"status+event {r['trickle_status_cpu_us_per_step']:.0f} us CPU/step")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (the test suite's)")
    parser.add_argument("--readings", type=int, default=60_000, help="readings per flat-out round")
    parser.add_argument("--steps", type=int, default=200, help="readings per trickle round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # no open/close lines
    run_and_report(parser.parse_args(), bench, report)


if __name__ == "__main__":
    main()
