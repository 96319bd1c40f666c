"""Ingest benchmark: N devices -> embedded broker -> SQLite, beside a bare amqtt broker in the same run.

    .venv/bin/python -m tests.bench.bench_ingest                 # 100 devices, full run (~2 min)
    .venv/bin/python -m tests.bench.bench_ingest --smoke         # seconds; what the test suite runs

Prints figures and writes them as JSON (--json); asserts nothing about time. For each of
`--repeat` rounds (the median is reported):
  * flat out, QoS 1 and QoS 0: gateway readings committed/s vs bare amqtt messages forwarded/s
    to one subscriber;
  * fixed total rates (--rates): ingest latency publish -> committed, p50/p99 (gateway);
then, once: gateway RSS with all devices connected, peak RSS, and CPU at 1 reading / 10 s per device.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.bench.common import run_and_report
from tests.bench.mqttload import Device, run_load, subscriber
from tests.fixtures.gateway import device_password, free_port, write_config

HOST = "127.0.0.1"


@dataclass
class Target:
    """A broker process under test, with its resource usage sampled while it runs."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    stats_path: Path | None = None
    peak_rss: int = 0
    _ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self._ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        value = int(self._ps.memory_info().rss)
        self.peak_rss = max(self.peak_rss, value)
        return value

    def cpu_seconds(self) -> float:
        t = self._ps.cpu_times()
        return float(t.user + t.system)

    async def probe_stats(self) -> dict[str, Any]:
        """Ask the gateway probe for its figures since the last call (SIGUSR1, one JSON line)."""
        assert self.stats_path is not None
        before = self.stats_path.read_text().count("\n") if self.stats_path.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(500):
            if self.stats_path.exists() and self.stats_path.read_text().count("\n") > before:
                return dict(json.loads(self.stats_path.read_text().splitlines()[-1]))
            await asyncio.sleep(0.01)
        raise RuntimeError("gateway probe did not answer")


async def wait_port(port: int, proc: asyncio.subprocess.Process, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


@contextlib.asynccontextmanager
async def started(name: str, devices: list[str], workdir: Path, storage: str = "",
                  backend: str = "embedded") -> AsyncIterator[Target]:
    port = free_port()
    if name == "gateway":
        config = write_config(workdir, devices=devices, port=port, storage=storage, backend=backend)
        stats = workdir / "probe-stats.jsonl"
        argv = [sys.executable, "-m", "tests.bench.gateway_probe", str(config), str(stats)]
    else:
        stats = None
        argv = [sys.executable, "-m", "tests.bench.bare_amqtt", str(port)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
    try:
        await wait_port(port, proc)
        yield Target(name, proc, port, stats)
    finally:
        await stop_process(proc)


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 15) -> None:
    """SIGTERM (the daemon's clean stop), then SIGKILL if it has not ended within `timeout` seconds."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def connect_all(target: Target, ids: list[str], qos: int) -> list[Device]:
    devices = [Device(d, device_password(d), qos) for d in ids]
    # connect in small groups: argon2 checks run in threads, a thundering herd only measures that
    for i in range(0, len(devices), 10):
        await asyncio.gather(*(d.connect(HOST, target.port) for d in devices[i : i + 10]))
    return devices


async def close_all(devices: list[Device]) -> None:
    await asyncio.gather(*(d.settle() for d in devices))
    await asyncio.gather(*(d.close() for d in devices), return_exceptions=True)


async def sample_rss(target: Target, stop: asyncio.Event) -> None:
    while not stop.is_set():
        target.rss()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def flat_out(target: Target, ids: list[str], qos: int, seconds: float) -> dict[str, float]:
    """Sustained messages/s: published flat out for `seconds`, counted until the target has caught up.

    Gateway: readings committed; bare amqtt: messages forwarded to one subscriber. The rate divides
    what was handled by the time from the first publish to the last one handled, so a broker that
    acknowledges fast and falls behind is not credited for its backlog.
    """
    devices = await connect_all(target, ids, qos)
    count: list[float] = [0, 0.0]
    stop_sub = asyncio.Event()
    sub_task = None
    if target.name == "bare":
        sub_task = asyncio.create_task(subscriber(HOST, target.port, "device/+/data", count, stop_sub))
        await asyncio.sleep(0.3)
    else:
        await target.probe_stats()  # reset the probe's counters
    cpu0 = target.cpu_seconds()
    started_at = time.time()
    elapsed = await run_load(devices, seconds=seconds, rate=None)
    sent = sum(d.sent for d in devices)
    handled, last = await drain(target, count)
    cpu1 = target.cpu_seconds()
    await close_all(devices)
    if sub_task is not None:
        stop_sub.set()
        sub_task.cancel()
        await asyncio.gather(sub_task, return_exceptions=True)
    span = max(last - started_at, elapsed)
    return {"rate": handled / span, "sent_rate": sent / elapsed, "cpu_pct": 100 * (cpu1 - cpu0) / span,
            "catch_up_s": max(0.0, last - started_at - elapsed)}


async def drain(target: Target, count: list[float], quiet: float = 0.5, limit: float = 60.0) -> tuple[float, float]:
    """Wait until the target handled everything queued; returns (handled, time of the last one)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    if target.name == "bare":
        seen = -1.0
        while count[0] != seen and loop.time() < deadline:
            seen = count[0]
            await asyncio.sleep(quiet)
        return count[0], count[1]
    handled, last = 0.0, 0.0
    while loop.time() < deadline:
        stats = await target.probe_stats()
        if not stats["committed"]:
            break
        handled += stats["committed"]
        last = stats["last_commit"]
        await asyncio.sleep(quiet)
    return handled, last


async def fixed_rate(target: Target, ids: list[str], rate: float, seconds: float) -> dict[str, float]:
    devices = await connect_all(target, ids, 1)
    await target.probe_stats()
    cpu0 = target.cpu_seconds()
    elapsed = await run_load(devices, seconds=seconds, rate=rate)
    await asyncio.sleep(0.2)  # let the last commits land before asking
    cpu1 = target.cpu_seconds()
    stats = await target.probe_stats()
    await close_all(devices)
    return {
        "rate": rate, "committed": stats["committed"], "p50_ms": stats["p50_ms"], "p99_ms": stats["p99_ms"],
        "max_ms": stats["max_ms"], "cpu_pct": 100 * (cpu1 - cpu0) / elapsed,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ids = [f"AP-{i:03d}" for i in range(1, args.devices + 1)]
    results: dict[str, Any] = {"devices": args.devices, "seconds": args.seconds, "repeat": args.repeat,
                               "cpus": os.cpu_count()}
    rounds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        workdir = Path(tmp)
        for round_no in range(args.repeat):
            # A fresh broker process per measurement: a QoS 0 flood leaves megabytes in kernel socket
            # buffers that would otherwise be measured as the next phase's latency.
            for name in ("bare", "gateway"):
                for qos in (1, 0):
                    folder = workdir / f"{name}-{round_no}-qos{qos}"
                    folder.mkdir()
                    async with started(name, ids, folder) as target:
                        r = await flat_out(target, ids, qos, args.seconds)
                    for key in ("rate", "cpu_pct", "catch_up_s"):
                        rounds.setdefault(f"{name}_qos{qos}_{key}", []).append(r[key])
            folder = workdir / f"latency-{round_no}"
            folder.mkdir()
            async with started("gateway", ids, folder) as target:
                for rate in args.rates:
                    r = await fixed_rate(target, ids, rate, args.seconds)
                    for key in ("p50_ms", "p99_ms", "max_ms", "cpu_pct"):
                        rounds.setdefault(f"gateway_{rate:g}_per_s_{key}", []).append(r[key])
        results.update({k: statistics.median(v) for k, v in rounds.items()})
        for qos in (1, 0):
            results[f"ratio_qos{qos}"] = results[f"gateway_qos{qos}_rate"] / results[f"bare_qos{qos}_rate"]

        # Memory and idle CPU with all devices connected, at 1 reading / 10 s each.
        folder = workdir / "idle"
        folder.mkdir()
        async with started("gateway", ids, folder) as target:
            results["gateway_rss_mb_started"] = target.rss() / 2**20
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample_rss(target, stop))
            devices = await connect_all(target, ids, 1)
            results["gateway_rss_mb_connected"] = target.rss() / 2**20
            await run_load(devices, seconds=min(5.0, args.idle_seconds), rate=args.devices / 10)  # warm-up
            cpu0 = target.cpu_seconds()
            elapsed = await run_load(devices, seconds=args.idle_seconds, rate=args.devices / 10)
            results["gateway_idle_cpu_pct"] = 100 * (target.cpu_seconds() - cpu0) / elapsed
            stop.set()
            await sampler
            results["gateway_rss_mb_peak_idle_run"] = target.peak_rss / 2**20
            await close_all(devices)
        # The same trickle with storage.idle_linger_ms = 1000 (one transaction per second, not per reading).
        folder = workdir / "idle-linger"
        folder.mkdir()
        async with started("gateway", ids, folder, storage="idle_linger_ms = 1000") as target:
            devices = await connect_all(target, ids, 1)
            await run_load(devices, seconds=min(5.0, args.idle_seconds), rate=args.devices / 10)
            cpu0 = target.cpu_seconds()
            elapsed = await run_load(devices, seconds=args.idle_seconds, rate=args.devices / 10)
            results["gateway_idle_cpu_pct_linger_1s"] = 100 * (target.cpu_seconds() - cpu0) / elapsed
            await close_all(devices)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [f"ingest benchmark: {results['devices']} devices, {results['seconds']} s phases, "
             f"median of {results['repeat']}, {results['cpus']} CPUs"]
    for qos in (1, 0):
        lines.append(
            f"  flat out QoS {qos}: gateway {results[f'gateway_qos{qos}_rate']:8.0f} readings/s committed "
            f"({results[f'gateway_qos{qos}_cpu_pct']:.0f} % CPU, "
            f"catch-up {results[f'gateway_qos{qos}_catch_up_s']:.1f} s)"
            f" | bare amqtt {results[f'bare_qos{qos}_rate']:8.0f} msg/s forwarded "
            f"({results[f'bare_qos{qos}_cpu_pct']:.0f} % CPU, catch-up {results[f'bare_qos{qos}_catch_up_s']:.1f} s)"
            f" | ratio {results[f'ratio_qos{qos}']:.2f}"
        )
    for key in sorted(k for k in results if k.endswith("_per_s_p50_ms")):
        base = key.removesuffix("_p50_ms")
        lines.append(
            f"  {base.removeprefix('gateway_').replace('_per_s', '/s'):>8}: latency publish->committed "
            f"p50 {results[key]:.1f} ms, p99 {results[base + '_p99_ms']:.1f} ms, max {results[base + '_max_ms']:.1f}"
            f" ms, CPU {results[base + '_cpu_pct']:.0f} %"
        )
    lines.append(
        f"  RSS: {results['gateway_rss_mb_started']:.1f} MB started, {results['gateway_rss_mb_connected']:.1f} MB "
        f"with {results['devices']} devices, peak {results['gateway_rss_mb_peak_idle_run']:.1f} MB; "
        f"CPU at 1 reading/10 s per device: {results['gateway_idle_cpu_pct']:.2f} % "
        f"({results['gateway_idle_cpu_pct_linger_1s']:.2f} % with storage.idle_linger_ms = 1000)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each measured phase")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[500.0, 1000.0])
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 5 devices, 1 s phases, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.seconds, args.repeat, args.rates, args.idle_seconds = 5, 1.0, 1, [100.0], 1.0
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
