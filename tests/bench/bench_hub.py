"""Hub demultiplexer benchmark: chunked batches of relayed BLE beacons through the embedded broker.

    .venv/bin/python -m tests.bench.bench_hub            # 2,000-beacon batches, 20 timed, 10 hubs x 5 open
    .venv/bin/python -m tests.bench.bench_hub --smoke    # seconds; what the test suite runs

The gateway runs in this process (its BLE decoders are not wired in yet, so relayed adverts are decoded by
the tests' small BTHome decoder, tests/fixtures/bthome_min.py); the hubs are the firmware simulator's batches
sent by aiomqtt clients at QoS 1 with a window of 20. Prints (asserts nothing about time):
  * last part -> committed: from the publish of a batch's last missing part to the commit of the whole
    batch (2,000 readings in 67 parts of 30, sent out of order with 5 parts twice): p50 and max;
  * memory: process RSS with 10 hubs connected, then with 10 hubs x 5 open batches (each half sent: 34 of
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
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import structlog
from firmware_sim.hub import batch_parts, beacon_mac, beacon_readings, delivery_order

from gateway.app import Gateway
from gateway.core.models import HubBatchClosed
from gateway.settings import load_settings
from tests.bench.common import percentile, run_and_report
from tests.fixtures.bthome_min import MiniBthomeDecoder
from tests.fixtures.gateway import device_password, write_config

HUBS = [f"HUB-{n:02d}" for n in range(1, 11)]
LOGICAL = [f"T-{n}" for n in range(1, 21)]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextlib.asynccontextmanager
async def gateway(folder: Path, beacons: int) -> AsyncIterator[Gateway]:
    kinds = {**{h: "hub" for h in HUBS}, **{d: "sensor" for d in LOGICAL}}
    config = write_config(folder, devices=[*HUBS, *LOGICAL], kinds=kinds, api="enabled = false",
                          extra="[hubs]\nmax_bytes_held = 1048576\nmax_open_batches = 8")
    gw = Gateway(load_settings(config))
    gw.hubs.set_decoder(MiniBthomeDecoder({beacon_mac(n): LOGICAL[n % 20] for n in range(beacons)}))
    task = asyncio.create_task(gw.run(install_signals=False))
    await asyncio.wait_for(gw.ready.wait(), 20)
    try:
        yield gw
    finally:
        gw.stop()
        await task


def client(port: int, hub_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=hub_id, username=hub_id, password=device_password(hub_id),
                          max_inflight_messages=20, max_queued_outgoing_messages=0)


def make_batch(batch_id: str, beacons: int, heard_at: float, rng: random.Random) -> tuple[list[bytes], list[int]]:
    parts = batch_parts(batch_id, beacon_readings(beacons, heard_at, rng), 30)
    return parts, delivery_order(len(parts), rng, out_of_order=True, duplicates=5)


async def last_part_latency(gw: Gateway, batches: int, beacons: int, rng: random.Random) -> list[float]:
    """Seconds from the publish of each batch's last missing part to the commit of the whole batch."""
    loop = asyncio.get_running_loop()
    committed: dict[str, float] = {}

    def on_commit(records: Any) -> None:
        for rec in records:
            if isinstance(rec, HubBatchClosed):
                committed[rec.batch_id] = loop.time()

    gw.writer.on_commit.append(on_commit)
    out = []
    topic = "device/HUB-01/batch"
    async with client(gw.broker.bound_ports()[0], "HUB-01") as hub:
        for n in range(batches):
            batch_id = f"lat-{n}"
            parts, order = make_batch(batch_id, beacons, gw.clock.now() - 5, rng)
            last = order[-1]
            await asyncio.gather(*(hub.publish(topic, parts[i], qos=1) for i in order if i != last))
            await gw.writer.flush()
            t0 = loop.time()
            await hub.publish(topic, parts[last], qos=1)
            out.append(committed[batch_id] - t0)
    gw.writer.on_commit.remove(on_commit)
    return out


async def open_batches(gw: Gateway, per_hub: int, beacons: int, rng: random.Random) -> dict[str, float]:
    """RSS with every hub connected, then with `per_hub` half-sent batches each, then after they completed."""
    port = gw.broker.bound_ports()[0]
    async with contextlib.AsyncExitStack() as stack:
        hubs = [await stack.enter_async_context(client(port, h)) for h in HUBS]
        await gw.writer.flush()
        figures = {"rss_mb_hubs_connected": rss_mb()}
        held: list[tuple[aiomqtt.Client, str, list[bytes], list[int]]] = []
        for hub_id, hub in zip(HUBS, hubs, strict=True):
            for n in range(per_hub):
                parts, order = make_batch(f"{hub_id}-open-{n}", beacons, gw.clock.now() - 5, rng)
                half = len(order) // 2
                await asyncio.gather(*(hub.publish(f"device/{hub_id}/batch", parts[i], qos=1) for i in order[:half]))
                held.append((hub, hub_id, parts, order[half:]))
        await gw.writer.flush()
        figures["rss_mb_open_batches"] = rss_mb()
        figures["held_mb"] = gw.hubs.demux.held_bytes() / 2**20
        figures["open_batches"] = float(sum(len(gw.hubs.demux.open_batches(h)) for h in HUBS))
        for hub, hub_id, parts, rest in held:
            await asyncio.gather(*(hub.publish(f"device/{hub_id}/batch", parts[i], qos=1) for i in rest))
        await gw.writer.flush()
        figures["rss_mb_after_completed"] = rss_mb()
        figures["held_mb_after_completed"] = gw.hubs.demux.held_bytes() / 2**20
    return figures


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    beacons, batches, per_hub = (300, 3, 5) if args.smoke else (args.beacons, args.batches, 5)
    rng = random.Random(11)
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        async with gateway(Path(tmp), beacons) as gw:
            latencies = await last_part_latency(gw, batches, beacons, rng)
            memory = await open_batches(gw, per_hub, beacons, rng)
            db = gw.loaded.db_path
        with sqlite3.connect(db) as conn:
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
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    run_and_report(parser.parse_args(), bench, report)


if __name__ == "__main__":
    main()
