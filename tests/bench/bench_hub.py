"""Hub demultiplexer benchmark: chunked batches of relayed BLE beacons through the embedded broker.

    .venv/bin/python -m tests.bench.bench_hub            # 2,000-beacon batches, 20 timed, 10 hubs x 5 open
    .venv/bin/python -m tests.bench.bench_hub --smoke    # seconds; what the test suite runs

The gateway runs as its own process (tests/bench/hub_probe.py: `edge-gateway run` with the tests' small BTHome
decoder for relayed adverts, the gateway's own BLE decoders not being wired in yet); the hubs are the firmware
simulator's batches sent by aiomqtt clients at QoS 1 with a window of 20. Prints (asserts nothing about time):
  * last part -> committed: from the publish of a batch's last missing part to its PUBACK, which the gateway
    sends once the whole batch is committed (2,000 readings in 67 parts of 30, sent out of order with 5
    parts twice): p50 and max;
  * memory: gateway RSS with 10 hubs connected, then with 10 hubs x 5 open batches (each half sent: 34 of
    67 parts held), and after they completed; the bytes of parts held;
  * loss check: every reading of every batch stored exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import psutil
from firmware_sim.hub import batch_parts, beacon_readings, delivery_order

from tests.bench.bench_ingest import HOST, stop_process, wait_port
from tests.bench.common import percentile, run_and_report
from tests.fixtures.gateway import device_password, free_port, write_config

HUBS = [f"HUB-{n:02d}" for n in range(1, 11)]
LOGICAL = [f"T-{n}" for n in range(1, 21)]
QUIET = logging.getLogger("bench_hub.mqtt")  # aiomqtt warns of every publish queued behind the window of 20
QUIET.setLevel(logging.ERROR)


@dataclass
class Target:
    proc: asyncio.subprocess.Process
    port: int
    db: Path

    def rss_mb(self) -> float:
        return float(psutil.Process(self.proc.pid).memory_info().rss) / 2**20


@contextlib.asynccontextmanager
async def gateway_process(folder: Path, beacons: int) -> AsyncIterator[Target]:
    port = free_port()
    kinds = {**{h: "hub" for h in HUBS}, **{d: "sensor" for d in LOGICAL}}
    config = write_config(folder, devices=[*HUBS, *LOGICAL], kinds=kinds, port=port, api="enabled = false",
                          extra="[hubs]")  # the default limits: 8 open batches, 1 MiB held per hub
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.bench.hub_probe", str(config),
                                                str(beacons), stdout=asyncio.subprocess.DEVNULL)
    try:
        await wait_port(port, proc)
        yield Target(proc, port, folder / "data" / "gateway.db")
    finally:
        await stop_process(proc)


def client(port: int, hub_id: str) -> aiomqtt.Client:
    return aiomqtt.Client(HOST, port, identifier=hub_id, username=hub_id, password=device_password(hub_id),
                          max_inflight_messages=20, logger=QUIET)


class Batches:
    """Batches whose readings never share a time: each batch's beacons heard in its own 10 s slot, in the past."""

    def __init__(self, beacons: int, rng: random.Random) -> None:
        self.beacons, self.rng, self.made = beacons, rng, 0
        self.start = time.time() - 5000.0

    def make(self, batch_id: str) -> tuple[list[bytes], list[int]]:
        heard_at = self.start + 10.0 * self.made
        self.made += 1
        parts = batch_parts(batch_id, beacon_readings(self.beacons, heard_at, self.rng), 30)
        return parts, delivery_order(len(parts), self.rng, out_of_order=True, duplicates=5)


async def last_part_latency(target: Target, batches: int, make: Batches) -> list[float]:
    """Seconds from the publish of each batch's last missing part to its PUBACK (sent once all is committed)."""
    out = []
    topic = "device/HUB-01/batch"
    async with client(target.port, "HUB-01") as hub:
        for n in range(batches):
            parts, order = make.make(f"lat-{n}")
            last = order[-1]
            await asyncio.gather(*(hub.publish(topic, parts[i], qos=1) for i in order if i != last))
            t0 = time.perf_counter()
            await hub.publish(topic, parts[last], qos=1)
            out.append(time.perf_counter() - t0)
    return out


async def open_batches(target: Target, per_hub: int, make: Batches) -> dict[str, float]:
    """Gateway RSS with every hub connected, then with `per_hub` half-sent batches each, then once completed."""
    async with contextlib.AsyncExitStack() as stack:
        hubs = [await stack.enter_async_context(client(target.port, h)) for h in HUBS]
        figures = {"rss_mb_hubs_connected": target.rss_mb()}
        rest: list[tuple[aiomqtt.Client, str, list[bytes], list[int]]] = []
        held = 0
        for hub_id, hub in zip(HUBS, hubs, strict=True):
            for n in range(per_hub):
                parts, order = make.make(f"{hub_id}-open-{n}")
                half = len(order) // 2
                sent = {i: parts[i] for i in order[:half]}
                held += sum(len(p) for p in sent.values())
                await asyncio.gather(*(hub.publish(f"device/{hub_id}/batch", parts[i], qos=1) for i in order[:half]))
                rest.append((hub, hub_id, parts, order[half:]))
        figures["rss_mb_open_batches"] = target.rss_mb()  # every part so far acknowledged: stored and held
        figures["held_mb"] = held / 2**20
        for hub, hub_id, parts, order in rest:
            await asyncio.gather(*(hub.publish(f"device/{hub_id}/batch", parts[i], qos=1) for i in order))
        figures["rss_mb_after_completed"] = target.rss_mb()
    return figures


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    beacons, batches, per_hub = (300, 3, 5) if args.smoke else (args.beacons, args.batches, 5)
    make = Batches(beacons, random.Random(11))
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        async with gateway_process(Path(tmp), beacons) as target:
            latencies = await last_part_latency(target, batches, make)
            memory = await open_batches(target, per_hub, make)
        with sqlite3.connect(target.db) as conn:
            stored, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT device_id || '@' || ts) FROM readings").fetchone()
            quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    expected = beacons * (batches + len(HUBS) * per_hub)
    return {
        "beacons": beacons, "parts": len(batch_parts("x", [{}] * beacons, 30)), "batches_timed": batches,
        "last_part_to_commit_p50_ms": percentile(latencies, 50) * 1000,
        "last_part_to_commit_max_ms": max(latencies) * 1000,
        "last_part_to_commit_mean_ms": statistics.fmean(latencies) * 1000,
        **memory,
        "rss_mb_growth_open_batches": memory["rss_mb_open_batches"] - memory["rss_mb_hubs_connected"],
        "open_batches": float(len(HUBS) * per_hub),
        "readings_expected": expected, "readings_stored": stored, "readings_distinct": distinct,
        "quarantined": quarantined, "lost": expected - distinct, "doubled": stored - distinct,
    }


def report(r: dict[str, Any]) -> str:
    return "\n".join([
        f"hub batches of {r['beacons']:,} beacons ({r['parts']} parts of 30, out of order, 5 parts twice)",
        f"  last part -> committed: p50 {r['last_part_to_commit_p50_ms']:.1f} ms, max "
        f"{r['last_part_to_commit_max_ms']:.1f} ms over {r['batches_timed']} batches",
        f"  memory: RSS {r['rss_mb_hubs_connected']:.1f} MB with 10 hubs connected, {r['rss_mb_open_batches']:.1f} MB "
        f"with {r['open_batches']:.0f} open batches (10 hubs x 5, half sent; {r['held_mb']:.2f} MB of parts held: "
        f"+{r['rss_mb_growth_open_batches']:.1f} MB), {r['rss_mb_after_completed']:.1f} MB once completed",
        f"  readings: {r['readings_stored']:,} stored of {r['readings_expected']:,}: {r['lost']} lost, "
        f"{r['doubled']} doubled, {r['quarantined']} quarantined",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (the test suite's)")
    parser.add_argument("--beacons", type=int, default=2000, help="beacons per batch")
    parser.add_argument("--batches", type=int, default=20, help="batches timed from last part to commit")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    run_and_report(parser.parse_args(), bench, report)


if __name__ == "__main__":
    main()
