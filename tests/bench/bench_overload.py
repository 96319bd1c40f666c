"""Delivery during a 2x overload: devices offer twice what the gateway carries to the cloud, each LAN broker backend.

    .venv/bin/python -m tests.bench.bench_overload                       # 100 devices, both backends (~4 min)
    .venv/bin/python -m tests.bench.bench_overload --backend embedded    # one backend
    .venv/bin/python -m tests.bench.bench_overload --smoke               # seconds; what the test suite runs

Per backend, one gateway (`edge-gateway run`, pinned with its Mosquitto child to one core: --cpu), a
Mosquitto as the cloud, devices QoS 1, each publishing its share of the offer on its own schedule (prints
figures, asserts nothing about time):
  1. sustained: offers rising by 25 % from --start-rate (--step-seconds each) until one is not carried
     (all sent, 0 lost, the last reading in the cloud within 2 s after the load); the highest carried is the
     sustained rate, with its CPU per reading;
  2. overload: devices offer --factor x that rate for --seconds: cloud deliveries/s during the load and
     after it (until the last arrived), lost, latency device -> cloud p50/p99 of what arrived during the
     load (stamped when it left the device: live data goes first), the gateway's CPU share and its Mosquitto
     child's part of it (that backend's Mosquitto takes and queues the whole offer: devices get its PUBACK).
The ratio during-load / sustained comes from the same run; so do the CPU-normalised figures (readings
delivered per CPU-second of the gateway, Mosquitto child included), which a busy machine disturbs less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil

from tests.bench.bench_ingest import Target, close_all, connect_all, stop_process, wait_port
from tests.bench.bench_uplink import CloudCounter
from tests.bench.common import percentile, run_and_report
from tests.bench.mqttload import Device, reading_payload
from tests.fixtures.gateway import free_port, write_config
from tests.fixtures.mosquitto import MosquittoBroker

BACKENDS = ("embedded", "mosquitto")
STEP = 1.25  # the sustained rate's search: each step offers this much more than the last one carried
DRAINED_S = 2.0  # a rate is carried when the last reading reached the cloud at most this long after the load
TICK_S = 0.05  # each device sends what is due this often


@contextlib.asynccontextmanager
async def gateway(ids: list[str], folder: Path, cloud_port: int, backend: str,
                  cpu: int | None) -> AsyncIterator[Target]:
    """`edge-gateway run` with the uplink on, pinned to `cpu` (its Mosquitto child inherits the pinning)."""
    port = free_port()
    extra = (f'[uplink]\nenabled = true\nhost = "127.0.0.1"\nport = {cloud_port}\ntls = false\n'
             "reconnect_max_seconds = 1\n")
    config = write_config(folder, devices=ids, port=port, extra=extra, backend=backend,
                          storage="commit_interval_ms = 5")  # the default (the test config's is 2)
    pin: Callable[[], None] | None = None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "--config", str(config), stdout=asyncio.subprocess.DEVNULL,
        preexec_fn=pin,
    )
    try:
        await wait_port(port, proc)
        yield Target("gateway", proc, port)
    finally:
        await stop_process(proc)


class CpuMeter:
    """CPU seconds of the gateway and its children (the Mosquitto backend's broker)."""

    def __init__(self, pid: int) -> None:
        root = psutil.Process(pid)
        self._procs = [root, *root.children(recursive=True)]

    def seconds(self, *, children_only: bool = False) -> float:
        total = 0.0
        for proc in self._procs[1:] if children_only else self._procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                total += t.user + t.system
        return total


async def offer(devices: list[Device], rate: float, seconds: float) -> float:
    """Each device publishes its share of `rate` for `seconds` on its own schedule, its reading stamped when it
    leaves (after the wait for room in its window: the gateway's back-pressure). Returns the elapsed time."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds
    share = rate / len(devices)

    async def one(device: Device, offset: float) -> None:
        topic, sent = f"device/{device.device_id}/data", 0
        while (now := loop.time()) < end:
            due = int((now - start) * share + offset) - sent
            for _ in range(due):
                sent += 1
                await device.publish(topic, functools.partial(reading_payload, sent))
            await asyncio.sleep(TICK_S)

    await asyncio.gather(*(one(d, i / len(devices)) for i, d in enumerate(devices)))
    return loop.time() - start


async def phase(devices: list[Device], counter: CloudCounter, cpu: CpuMeter, rate: float,
                seconds: float) -> dict[str, float]:
    """Offer `rate` readings/s for `seconds`: cloud deliveries during the load and after it, lost, latency, CPU."""
    for d in devices:
        d.sent = 0
    counter.reset()
    counter.latencies, counter.measure = [], True
    c0, b0 = cpu.seconds(), cpu.seconds(children_only=True)
    elapsed = await offer(devices, rate, seconds)
    during, used, broker = counter.count, cpu.seconds() - c0, cpu.seconds(children_only=True) - b0
    counter.measure = False
    ended = time.time()
    sent = sum(d.sent for d in devices)
    last = await counter.wait_for(sent, quiet=3.0)
    after = counter.count - during
    return {
        "offered_rate": rate, "sent_rate": sent / seconds, "during_rate": during / elapsed,
        "after_rate": after / max(last - ended, 1e-9) if after else 0.0,
        "after_s": max(0.0, last - ended) if after else 0.0, "lost": float(sent - counter.count),
        "live_p50_ms": percentile(counter.latencies, 50) * 1000,
        "live_p99_ms": percentile(counter.latencies, 99) * 1000,
        "cpu_pct": 100 * used / elapsed, "broker_cpu_pct": 100 * broker / elapsed,
        "per_cpu_s": during / max(used, 1e-9),
    }


def carried(r: dict[str, float]) -> bool:
    """The gateway carried the offer: all of it sent and delivered, the rest within DRAINED_S after the load."""
    return r["lost"] == 0 and r["sent_rate"] >= 0.95 * r["offered_rate"] and r["after_s"] <= DRAINED_S


async def sustained(devices: list[Device], counter: CloudCounter, cpu: CpuMeter, args: argparse.Namespace,
                    ) -> dict[str, float]:
    """The highest offered rate carried (rates rising by STEP from --start-rate, --step-seconds each)."""
    best: dict[str, float] | None = None
    rate = args.start_rate
    for _ in range(args.max_steps):
        r = await phase(devices, counter, cpu, rate, args.step_seconds)
        if not carried(r):
            print(f"  (not carried: {r})", file=sys.stderr)
            break
        best, rate = r, rate * STEP
    if best is None:
        raise RuntimeError(f"the gateway did not carry {args.start_rate:g}/s: lower --start-rate")
    return {"rate": best["offered_rate"], "lost": best["lost"], "p99_ms": best["live_p99_ms"],
            "per_cpu_s": best["per_cpu_s"], "cpu_ms_per_reading": 1000 / best["per_cpu_s"]}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ids = [f"AP-{i:03d}" for i in range(1, args.devices + 1)]
    results: dict[str, Any] = {"devices": args.devices, "seconds": args.seconds, "factor": args.factor,
                               "backends": list(args.backend), "cpu": args.cpu}
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        work = Path(tmp)
        cloud = MosquittoBroker(work / "cloud", persistence=True)
        cloud.start()
        counter = CloudCounter(cloud.port)
        await counter.start()
        try:
            for backend in args.backend:
                folder = work / backend
                folder.mkdir()
                async with gateway(ids, folder, cloud.port, backend, args.cpu) as gw:
                    meter = CpuMeter(gw.proc.pid)
                    devices = await connect_all(gw, ids, 1)
                    base = await sustained(devices, counter, meter, args)
                    load = await phase(devices, counter, meter, args.factor * base["rate"], args.seconds)
                    await close_all(devices)
                figures = {f"sustained_{k}": v for k, v in base.items()} | {f"overload_{k}": v for k, v in load.items()}
                figures["ratio"] = load["during_rate"] / base["rate"]
                figures["ratio_per_cpu_s"] = load["per_cpu_s"] / base["per_cpu_s"]
                results |= {f"{backend}_{k}": v for k, v in figures.items()}
        finally:
            await counter.stop()
            cloud.stop()
    return results


def report(r: dict[str, Any]) -> str:
    pinned = "not pinned" if r["cpu"] is None else f"gateway pinned to CPU {r['cpu']}"
    lines = [f"delivery during a {r['factor']:g}x overload: {r['devices']} devices, {r['seconds']:g} s load, {pinned}"]
    for b in r["backends"]:
        lines += [
            f"  {b}: sustained device -> cloud {r[f'{b}_sustained_rate']:.0f} readings/s (lost "
            f"{r[f'{b}_sustained_lost']:.0f}, p99 {r[f'{b}_sustained_p99_ms']:.0f} ms, "
            f"{r[f'{b}_sustained_cpu_ms_per_reading']:.3f} ms CPU per reading)",
            f"  {b}: offered {r[f'{b}_overload_offered_rate']:.0f}/s (sent {r[f'{b}_overload_sent_rate']:.0f}/s) -> "
            f"cloud during the load "
            f"{r[f'{b}_overload_during_rate']:.0f}/s (ratio {r[f'{b}_ratio']:.2f}), after it "
            f"{r[f'{b}_overload_after_rate']:.0f}/s for {r[f'{b}_overload_after_s']:.1f} s, lost "
            f"{r[f'{b}_overload_lost']:.0f}; live p50 {r[f'{b}_overload_live_p50_ms']:.0f} ms, p99 "
            f"{r[f'{b}_overload_live_p99_ms']:.0f} ms; CPU {r[f'{b}_overload_cpu_pct']:.0f} % (its Mosquitto "
            f"{r[f'{b}_overload_broker_cpu_pct']:.0f} %), delivered per "
            f"CPU-second {r[f'{b}_overload_per_cpu_s']:.0f} (sustained {r[f'{b}_sustained_per_cpu_s']:.0f}, "
            f"ratio {r[f'{b}_ratio_per_cpu_s']:.2f})",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", type=lambda s: [b for b in s.split(",") if b], default=list(BACKENDS),
                        help="comma-separated: embedded,mosquitto")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--factor", type=float, default=2.0, help="the overload's offer, times the sustained rate")
    parser.add_argument("--start-rate", type=float, default=1000.0, help="the sustained search's first offer (/s)")
    parser.add_argument("--step-seconds", type=float, default=5.0)
    parser.add_argument("--max-steps", type=int, default=10)
    cores = os.cpu_count() or 1
    parser.add_argument("--cpu", type=int, default=cores - 1 if cores > 1 else None,
                        help="pin the gateway to this CPU (default: the last one; -1: not pinned)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.cpu is not None and args.cpu < 0:
        args.cpu = None
    if unknown := set(args.backend) - set(BACKENDS):
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    if args.smoke:
        args.devices, args.seconds, args.step_seconds, args.start_rate, args.max_steps = 5, 1.0, 1.0, 100.0, 2
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
