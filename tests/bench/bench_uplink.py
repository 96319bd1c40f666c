"""Uplink benchmark: devices -> gateway -> Mosquitto (the cloud), beside a bare amqtt broker in the same run.

    .venv/bin/python -m tests.bench.bench_uplink            # 100 devices, 100,000-reading backlogs (~3 min)
    .venv/bin/python -m tests.bench.bench_uplink --smoke    # seconds; what the test suite runs

Prints (asserts nothing about time):
  * sustained readings/s that reach the cloud, device QoS 1 flat out, and the bare amqtt broker's
    QoS 1 forwarding rate under the same load;
  * end-to-end latency (device publish -> cloud subscriber) p50/p99 at fixed rates;
  * CPU per reading: the gateway process's CPU seconds (broker, ingest, store, uplink; every thread)
    over the readings that reached the cloud, at a fixed offer (--cpu-rate, 1,000/s; 100 devices, QoS 1);
  * drain rate of a backlog built while the cloud was down, per-reading and batched;
  * gateway peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

from tests.bench.bench_ingest import HOST, close_all, connect_all, flat_out, started, wait_port
from tests.bench.common import DAEMON_ARGV, percentile, run_and_report
from tests.bench.mqttload import connect_packet, read_packet, run_load, subscribe_packet
from tests.fixtures.gateway import free_port, write_config
from tests.fixtures.mosquitto import MosquittoBroker


class CloudCounter:
    """Subscribes to all telemetry on the cloud broker; counts distinct msgIds and records arrival times.

    A persistent session with a QoS 1 subscription, on a broker that keeps sessions across restarts: when
    the bench restarts the cloud broker (the drain phases), the gateway may reconnect and publish before
    this counter has subscribed again; the broker queues those readings for it instead of dropping them
    (a clean QoS 0 subscriber counted them as lost: ~50 of 500 in one smoke run out of ~10).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0  # distinct msgIds since reset()
        self.last = 0.0
        self.latencies: list[float] = []
        self.measure = False
        self._seen: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        """Count from zero (each phase's gateway has a new outbox, so its msgIds start again)."""
        self.count = 0
        self._seen.clear()

    async def start(self) -> None:
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready))
        await asyncio.wait_for(ready.wait(), 10)

    async def _run(self, ready: asyncio.Event) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
                writer.write(connect_packet("bench-cloud", None, None, clean=False))
                await read_packet(reader)
                writer.write(subscribe_packet("v1/telemetry/#", 1))
                ready.set()
                seen = self._seen
                while True:
                    kind, body = await read_packet(reader)
                    if kind & 0xF0 != 0x30:
                        continue
                    now = time.time()
                    start = 2 + int.from_bytes(body[:2], "big")
                    if kind & 0x06:  # QoS 1: acknowledge, or the broker sends it again
                        writer.write(b"\x40\x02" + body[start:start + 2])
                        start += 2
                    payload = json.loads(body[start:])
                    readings = [r for r in payload.get("readings") or [payload] if r["msgId"] not in seen]
                    seen.update(r["msgId"] for r in readings)
                    self.count += len(readings)
                    self.last = now
                    if self.measure:
                        self.latencies.extend(now - r["ts"] for r in readings)
            except (OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_for(self, total: int, quiet: float = 2.0, limit: float = 300.0, poll: float = 0.05) -> float:
        """Wait until `total` readings arrived (or none for `quiet` s); returns the last arrival time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        seen, since = -1, loop.time()
        while self.count < total and loop.time() < deadline:
            if self.count != seen:
                seen, since = self.count, loop.time()
            elif loop.time() - since > quiet:
                break
            await asyncio.sleep(poll)
        return self.last


@contextlib.asynccontextmanager
async def gateway_with_uplink(
    ids: list[str], folder: Path, cloud_port: int, *, batch: bool, extra_uplink: str = "", backend: str = "embedded",
    gateway_id: str = "gw-test",
) -> AsyncIterator[Any]:
    port = free_port()
    extra = (f"[uplink]\nenabled = true\nhost = \"127.0.0.1\"\nport = {cloud_port}\ntls = false\n"
             f"reconnect_max_seconds = 1\nbatch = {'true' if batch else 'false'}\nbacklog_share = 1.0\n"
             + extra_uplink)
    config = write_config(folder, devices=ids, port=port, extra=extra, backend=backend, gateway_id=gateway_id)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *DAEMON_ARGV, "--config", str(config), stdout=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_port(port, proc)
        proc.port = port  # type: ignore[attr-defined]
        proc.name = "gateway"  # type: ignore[attr-defined]
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)


async def sustained(devices: list[Any], counter: CloudCounter, seconds: float) -> tuple[float, float]:
    """Devices publish flat out for `seconds`: readings/s that reached the cloud, and how many did not."""
    counter.reset()
    t0 = time.time()
    await run_load(devices, seconds=seconds, rate=None)
    sent = sum(d.sent for d in devices)
    last = await counter.wait_for(sent)
    return counter.count / max(last - t0, 1e-9), float(sent - counter.count)


async def cpu_per_reading(gw: Any, devices: list[Any], counter: CloudCounter, rate: float,
                          seconds: float) -> tuple[float, int]:
    """(gateway CPU seconds, readings delivered to the cloud) for `seconds` of `rate` readings/s offered: the
    CPU is user + system of every thread, read once the last reading has arrived (nothing left in flight)."""
    ps = psutil.Process(gw.pid)
    counter.reset()
    sent_before = sum(d.sent for d in devices)
    before = ps.cpu_times()
    await run_load(devices, seconds=seconds, rate=rate)
    await counter.wait_for(sum(d.sent for d in devices) - sent_before)
    after = ps.cpu_times()
    return float((after.user - before.user) + (after.system - before.system)), counter.count


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ids = [f"AP-{i:03d}" for i in range(1, args.devices + 1)]
    results: dict[str, Any] = {"devices": args.devices, "seconds": args.seconds, "backlog": args.backlog,
                               "cpu_rate": args.cpu_rate}
    rounds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp:
        work = Path(tmp)
        cloud = MosquittoBroker(work / "cloud", persistence=True)  # the counter's session outlives restarts
        cloud.start()
        counter = CloudCounter(cloud.port)
        await counter.start()
        try:
            for round_no in range(args.repeat):
                folder = work / f"bare-{round_no}"
                folder.mkdir()
                async with started("bare", ids, folder) as bare:
                    rounds.setdefault("bare_qos1_rate", []).append((await flat_out(bare, ids, 1, args.seconds))["rate"])

                folder = work / f"sustained-{round_no}"
                folder.mkdir()
                async with gateway_with_uplink(ids, folder, cloud.port, batch=False) as gw:
                    ps = psutil.Process(gw.pid)
                    devices = await connect_all(gw, ids, 1)  # type: ignore[arg-type]
                    rate_, lost = await sustained(devices, counter, args.seconds)
                    rounds.setdefault("sustained_rate", []).append(rate_)
                    rounds.setdefault("sustained_lost", []).append(lost)
                    for rate in args.rates:
                        # Sustained at this rate means: everything offered reached the cloud, the last of it
                        # within 2 s of the load's end (the definition); p99 over all of it.
                        counter.reset()
                        counter.latencies, counter.measure = [], True
                        sent_before = sum(d.sent for d in devices)
                        await run_load(devices, seconds=args.seconds, rate=rate)
                        load_end, sent = time.time(), sum(d.sent for d in devices) - sent_before
                        last = await counter.wait_for(sent, quiet=3.0)
                        counter.measure = False
                        rounds.setdefault(f"e2e_{rate:g}_offered", []).append(sent / args.seconds)
                        rounds.setdefault(f"e2e_{rate:g}_lost", []).append(float(sent - counter.count))
                        rounds.setdefault(f"e2e_{rate:g}_drained_s", []).append(max(0.0, last - load_end))
                        rounds.setdefault(f"e2e_{rate:g}_p50_ms", []).append(percentile(counter.latencies, 50) * 1000)
                        rounds.setdefault(f"e2e_{rate:g}_p99_ms", []).append(percentile(counter.latencies, 99) * 1000)
                    cpu, delivered = await cpu_per_reading(gw, devices, counter, args.cpu_rate, args.seconds)
                    rounds.setdefault("cpu_ms_per_reading", []).append(1000 * cpu / max(delivered, 1))
                    rounds.setdefault("rss_mb", []).append(ps.memory_info().rss / 2**20)
                    await close_all(devices)

                # The same flat-out load with uplink.batch on: telemetry leaves in batch messages.
                folder = work / f"sustained-batched-{round_no}"
                folder.mkdir()
                async with gateway_with_uplink(ids, folder, cloud.port, batch=True) as gw:
                    devices = await connect_all(gw, ids, 1)  # type: ignore[arg-type]
                    rate_, lost = await sustained(devices, counter, args.seconds)
                    rounds.setdefault("sustained_batched_rate", []).append(rate_)
                    rounds.setdefault("sustained_batched_lost", []).append(lost)
                    await close_all(devices)

                for batch in (False, True):
                    folder = work / f"drain-{round_no}-{'batch' if batch else 'single'}"
                    folder.mkdir()
                    cloud.stop()
                    async with gateway_with_uplink(ids, folder, cloud.port, batch=batch) as gw:
                        devices = await connect_all(gw, ids, 1)  # type: ignore[arg-type]
                        per_device = max(1, args.backlog // len(devices))
                        await asyncio.gather(*(_publish_n(d, per_device) for d in devices))
                        await close_all(devices)
                        total = per_device * len(devices)
                        await asyncio.sleep(1.0)  # let the last readings commit
                        counter.reset()
                        cloud.start()
                        t0 = time.time()
                        last = await counter.wait_for(total, quiet=5.0)
                        key = "drain_batched_rate" if batch else "drain_per_reading_rate"
                        rounds.setdefault(key, []).append(counter.count / max(last - t0, 1e-9))
                        rounds.setdefault(key.replace("rate", "lost"), []).append(total - counter.count)
        finally:
            await counter.stop()
            cloud.stop()
    results.update({k: statistics.median(v) for k, v in rounds.items()})
    results["ratio_to_bare_qos1"] = results["sustained_rate"] / results["bare_qos1_rate"]
    results["batched_ratio_to_bare_qos1"] = results["sustained_batched_rate"] / results["bare_qos1_rate"]
    return results


async def _publish_n(device: Any, n: int) -> None:
    from tests.bench.mqttload import reading_payload

    for seq in range(n):
        await device.publish(f"device/{device.device_id}/data", reading_payload(seq))


def report(r: dict[str, Any]) -> str:
    lines = [
        f"uplink benchmark: {r['devices']} devices, {r['seconds']} s phases, backlog {r['backlog']} readings",
        f"  sustained device -> cloud: {r['sustained_rate']:.0f} readings/s (lost {r['sustained_lost']:.0f}); "
        f"bare amqtt QoS 1 forwarding {r['bare_qos1_rate']:.0f} msg/s; ratio {r['ratio_to_bare_qos1']:.2f}",
        f"  sustained with uplink.batch: {r['sustained_batched_rate']:.0f} readings/s "
        f"(lost {r['sustained_batched_lost']:.0f}); ratio {r['batched_ratio_to_bare_qos1']:.2f}",
    ]
    for key in sorted(k for k in r if k.endswith("_p50_ms")):
        base = key.removesuffix("_p50_ms")
        p99 = r[base + "_p99_ms"]
        lines.append(f"  {base.removeprefix('e2e_')}/s end to end: p50 {r[key]:.1f} ms, p99 {p99:.1f} ms "
                     f"({r[base + '_offered']:.0f}/s offered, lost {r[base + '_lost']:.0f}, "
                     f"last reading {r[base + '_drained_s']:.2f} s after the load)")
    lines.append(f"  CPU per reading at {r['cpu_rate']:g}/s offered ({r['devices']} devices, QoS 1): "
                 f"{r['cpu_ms_per_reading']:.3f} ms of the gateway's CPU per reading delivered to the cloud")
    lines.append(
        f"  backlog drain: {r['drain_per_reading_rate']:.0f} readings/s per-reading "
        f"(lost {r['drain_per_reading_lost']:.0f}), {r['drain_batched_rate']:.0f} readings/s batched "
        f"(lost {r['drain_batched_lost']:.0f}); gateway RSS {r['rss_mb']:.1f} MB"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[1000.0, 3000.0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--cpu-rate", type=float, default=1000.0, help="offered readings/s of the CPU phase")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.seconds, args.repeat, args.rates, args.backlog = 5, 1.0, 1, [100.0], 500
        args.cpu_rate = 100.0
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
