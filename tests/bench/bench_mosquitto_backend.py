"""The managed Mosquitto backend: N devices -> Mosquitto (the gateway's child) -> the gateway's client -> SQLite.

    .venv/bin/python -m tests.bench.bench_mosquitto_backend            # 100 devices, medians of 3 (~1 min)
    .venv/bin/python -m tests.bench.bench_mosquitto_backend --smoke    # seconds; what the test suite runs

Prints figures and writes them as JSON (--json); asserts nothing about time. Per round (the median is
reported): readings committed/s with every device publishing QoS 1 flat out (counted until the gateway
has caught up, as bench_ingest does), CPU of the gateway and of Mosquitto over that phase, and publish ->
committed latency p50/p99 at a fixed rate (--rate); once: RSS, PSS and private memory of the gateway and
of Mosquitto with every device connected. The embedded backend's figures are bench_ingest's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from tests.bench.bench_ingest import Target, close_all, connect_all, drain, fixed_rate, started
from tests.bench.common import run_and_report
from tests.bench.mqttload import run_load


def mosquitto_of(target: Target) -> psutil.Process:
    children = [c for c in psutil.Process(target.proc.pid).children() if c.name() == "mosquitto"]
    assert len(children) == 1, children
    return children[0]


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


async def flat_out(target: Target, ids: list[str], seconds: float) -> dict[str, float]:
    devices = await connect_all(target, ids, 1)
    mosquitto = mosquitto_of(target)
    await target.probe_stats()  # reset the probe's counters
    gw0, mq0 = target.cpu_seconds(), cpu_seconds(mosquitto)
    started_at = time.time()
    elapsed = await run_load(devices, seconds=seconds, rate=None)
    sent = sum(d.sent for d in devices)
    handled, last = await drain(target, [0, 0.0])
    gw1, mq1 = target.cpu_seconds(), cpu_seconds(mosquitto)
    await close_all(devices)
    span = max(last - started_at, elapsed)
    return {"rate": handled / span, "sent_rate": sent / elapsed, "lost": float(sent - handled),
            "gateway_cpu_pct": 100 * (gw1 - gw0) / span, "mosquitto_cpu_pct": 100 * (mq1 - mq0) / span,
            "cpu_us_per_reading": 1e6 * ((gw1 - gw0) + (mq1 - mq0)) / max(handled, 1.0),
            "catch_up_s": max(0.0, last - started_at - elapsed)}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ids = [f"AP-{i:03d}" for i in range(1, args.devices + 1)]
    results: dict[str, Any] = {"devices": args.devices, "seconds": args.seconds, "repeat": args.repeat,
                               "cpus": os.cpu_count(), "fixed_rate": args.rate}
    rounds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mosquitto-") as tmp:
        workdir = Path(tmp)
        for round_no in range(args.repeat):
            folder = workdir / f"flat-{round_no}"
            folder.mkdir()
            async with started("gateway", ids, folder, backend="mosquitto") as target:
                r = await flat_out(target, ids, args.seconds)
            for key, value in r.items():
                rounds.setdefault(f"qos1_{key}", []).append(value)
            folder = workdir / f"latency-{round_no}"
            folder.mkdir()
            async with started("gateway", ids, folder, backend="mosquitto") as target:
                f = await fixed_rate(target, ids, args.rate, args.seconds)
                for key in ("p50_ms", "p99_ms"):
                    rounds.setdefault(f"fixed_rate_{key}", []).append(f[key])
        results.update({k: statistics.median(v) for k, v in rounds.items()})
        folder = workdir / "rss"
        folder.mkdir()
        async with started("gateway", ids, folder, backend="mosquitto") as target:
            devices = await connect_all(target, ids, 1)
            await run_load(devices, seconds=min(2.0, args.seconds), rate=args.devices / 10)
            results["rss_mb_gateway"] = target.rss() / 2**20
            results["rss_mb_mosquitto"] = mosquitto_of(target).memory_info().rss / 2**20
            results["rss_mb_total"] = results["rss_mb_gateway"] + results["rss_mb_mosquitto"]
            # The two RSS figures both count the library pages the processes share (libc, libcrypto: most of
            # Mosquitto's RSS); PSS splits each shared page between the processes that map it.
            for name, proc in (("gateway", psutil.Process(target.proc.pid)), ("mosquitto", mosquitto_of(target))):
                full = proc.memory_full_info()
                results[f"pss_mb_{name}"], results[f"uss_mb_{name}"] = full.pss / 2**20, full.uss / 2**20
            results["pss_mb_total"] = results["pss_mb_gateway"] + results["pss_mb_mosquitto"]
            await close_all(devices)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        f"mosquitto backend: {results['devices']} devices, {results['seconds']} s phases, "
        f"median of {results['repeat']}, {results['cpus']} CPUs",
        f"  flat out QoS 1 device -> SQLite: {results['qos1_rate']:8.0f} readings/s committed "
        f"(offered {results['qos1_sent_rate']:.0f}/s, lost {results['qos1_lost']:.0f}, catch-up "
        f"{results['qos1_catch_up_s']:.1f} s); CPU gateway {results['qos1_gateway_cpu_pct']:.0f} % + Mosquitto "
        f"{results['qos1_mosquitto_cpu_pct']:.0f} %, {results['qos1_cpu_us_per_reading']:.0f} us per reading",
    ]
    lines.append(f"  {results['fixed_rate']:g}/s: latency publish->committed p50 "
                 f"{results['fixed_rate_p50_ms']:.1f} ms, p99 {results['fixed_rate_p99_ms']:.1f} ms")
    lines.append(f"  RSS with {results['devices']} devices: gateway {results['rss_mb_gateway']:.1f} MB + Mosquitto "
                 f"{results['rss_mb_mosquitto']:.1f} MB = {results['rss_mb_total']:.1f} MB; "
                 f"PSS {results['pss_mb_gateway']:.1f} + {results['pss_mb_mosquitto']:.1f} = "
                 f"{results['pss_mb_total']:.1f} MB (private: {results['uss_mb_gateway']:.1f} + "
                 f"{results['uss_mb_mosquitto']:.1f} MB)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured phase")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="readings/s of the latency phase")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 5 devices, 1 s phases, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.seconds, args.repeat, args.rate = 5, 1.0, 1, 100.0
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
