"""Control benchmark: REST API command -> embedded broker -> simulated purifier -> ack -> API response.

    .venv/bin/python -m tests.bench.bench_control            # 100 purifiers, 500 round trips, 3 rounds
    .venv/bin/python -m tests.bench.bench_control --smoke    # seconds; what the test suite runs

The gateway runs as its own process (`edge-gateway run`), the purifiers are the firmware simulator
(they ack at once: no device think time), the client is aiohttp. Prints (asserts nothing about time):
  * sequential round trips (POST /api/device/{id}/command, waiting for the ack): p50/p99;
  * N concurrent commands to N devices: wall time, p50/p99, how many acked, and the audit check:
    each command exactly once in the command log, each purifier executed exactly one of them;
  * gateway RSS with the purifiers connected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from firmware_sim.purifier import SimulatedPurifier

from tests.bench.bench_ingest import HOST, wait_port
from tests.bench.common import DAEMON_ARGV, percentile, run_and_report
from tests.fixtures.gateway import device_password, free_port, write_config


@contextlib.asynccontextmanager
async def gateway_process(
    ids: list[str], folder: Path, **config_keys: Any
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, int, Path]]:
    """`edge-gateway run` on free ports; `config_keys` go to write_config (users, device names)."""
    mqtt_port, api_port = free_port(), free_port()
    config = write_config(folder, devices=ids, port=mqtt_port, api=f"port = {api_port}", **config_keys)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *DAEMON_ARGV, "--config", str(config), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_port(mqtt_port, proc)
        await wait_port(api_port, proc)
        yield proc, mqtt_port, api_port, folder / "data" / "gateway.db"
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)


async def connect_purifiers(ids: list[str], port: int, interval: float = 3600.0
                            ) -> tuple[list[SimulatedPurifier], list[asyncio.Task[None]]]:
    sims = [SimulatedPurifier(device_id=d, password=device_password(d), port=port, interval=interval, seed=i,
                              backoff_initial=0.2, backoff_max=2.0) for i, d in enumerate(ids)]
    tasks = []
    for i in range(0, len(sims), 10):  # small groups: argon2 checks run in threads
        group = sims[i:i + 10]
        tasks += [asyncio.create_task(s.run()) for s in group]
        await asyncio.wait_for(asyncio.gather(*(s.wait_connected() for s in group)), 30)
    return sims, tasks


async def command(http: aiohttp.ClientSession, base: str, device: str, speed: int) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    async with http.post(f"{base}/api/device/{device}/command", json={"action": "setFanSpeed", "value": speed}) as r:
        body = await r.json()
    return time.perf_counter() - t0, body


async def wait_ready(http: aiohttp.ClientSession, base: str, ids: list[str], limit: float = 30.0) -> None:
    """Every purifier online and subscribed (a command sent earlier would wait in its queue)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        async with http.get(f"{base}/api/device/list/all") as r:
            devices = await r.json()
        if sum(1 for d in devices if d["online"]) == len(ids):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("purifiers did not all come online")


async def one_round(ids: list[str], folder: Path, sequential: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with gateway_process(ids, folder) as (proc, mqtt_port, api_port, db):
        sims, tasks = await connect_purifiers(ids, mqtt_port)
        base = f"http://{HOST}:{api_port}"
        try:
            async with aiohttp.ClientSession() as http:
                await wait_ready(http, base, ids)
                await asyncio.sleep(0.5)  # let the subscriptions settle before timing
                latencies: list[float] = []
                for i in range(sequential):
                    elapsed, body = await command(http, base, ids[i % len(ids)], 1 + i % 5)
                    if body.get("status") != "acked":
                        raise RuntimeError(f"round trip not acked: {body}")
                    latencies.append(elapsed)
                out["sequential_p50_ms"] = percentile(latencies, 50) * 1000
                out["sequential_p99_ms"] = percentile(latencies, 99) * 1000
                out["sequential_rate"] = len(latencies) / sum(latencies)

                before = {s.device_id: s.model.executed_commands for s in sims}
                t0 = time.perf_counter()
                results = await asyncio.gather(*(command(http, base, d, 5 if i % 2 else 3) for i, d in enumerate(ids)))
                out["concurrent_wall_ms"] = (time.perf_counter() - t0) * 1000
                out["concurrent_p50_ms"] = percentile([e for e, _ in results], 50) * 1000
                out["concurrent_p99_ms"] = percentile([e for e, _ in results], 99) * 1000
                out["concurrent_acked"] = float(sum(1 for _, b in results if b.get("status") == "acked"))
                executed = [s.model.executed_commands - before[s.device_id] for s in sims]
                ids_sent = [b.get("commandId") for _, b in results]
                out["rss_mb"] = psutil.Process(proc.pid).memory_info().rss / 2**20
        finally:
            for s in sims:
                s.stop()
            await asyncio.wait(tasks, timeout=10)
    with sqlite3.connect(db) as conn:  # the gateway has stopped: its log is complete on disk
        rows = conn.execute(
            "SELECT command_id, status, attempts FROM command_log WHERE command_id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids_sent),),
        ).fetchall()
    out["audit_rows"] = float(len(rows))
    out["audit_acked_once"] = float(sum(1 for _, status, attempts in rows if status == "acked" and attempts == 1))
    out["devices_executed_exactly_one"] = float(sum(1 for n in executed if n == 1))
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ids = [f"AP-{i:03d}" for i in range(1, args.devices + 1)]
    rounds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-control-") as tmp:
        for n in range(args.repeat):
            folder = Path(tmp) / f"round-{n}"
            folder.mkdir()
            for key, value in (await one_round(ids, folder, args.commands)).items():
                rounds.setdefault(key, []).append(value)
    results: dict[str, Any] = {"devices": args.devices, "commands": args.commands, "repeat": args.repeat}
    results.update({k: statistics.median(v) for k, v in rounds.items()})
    results["audit_ok_all_rounds"] = all(
        rounds["audit_rows"][i] == args.devices == rounds["audit_acked_once"][i]
        == rounds["devices_executed_exactly_one"][i] for i in range(args.repeat))
    return results


def report(r: dict[str, Any]) -> str:
    return "\n".join([
        f"control benchmark: {r['devices']} simulated purifiers, {r['commands']} sequential commands, "
        f"median of {r['repeat']} round(s)",
        f"  API command -> ack -> API response: p50 {r['sequential_p50_ms']:.1f} ms, "
        f"p99 {r['sequential_p99_ms']:.1f} ms ({r['sequential_rate']:.0f} round trips/s one at a time)",
        f"  {r['devices']} concurrent commands to {r['devices']} devices: "
        f"all done in {r['concurrent_wall_ms']:.0f} ms, "
        f"p50 {r['concurrent_p50_ms']:.1f} ms, p99 {r['concurrent_p99_ms']:.1f} ms, acked {r['concurrent_acked']:.0f}",
        f"  audit log: {r['audit_rows']:.0f} rows, {r['audit_acked_once']:.0f} acked on the first attempt; "
        f"{r['devices_executed_exactly_one']:.0f} purifiers executed exactly one command "
        f"({'no loss, no doubles' if r['audit_ok_all_rounds'] else 'MISMATCH'}); gateway RSS {r['rss_mb']:.1f} MB",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.commands, args.repeat = 5, 20, 1
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
