"""Both LAN broker backends side by side in one run: embedded amqtt and the managed Mosquitto (issue 18).

    .venv/bin/python -m tests.bench.bench_backends             # 100 devices, 5 s phases, medians of 3
    .venv/bin/python -m tests.bench.bench_backends --smoke     # seconds; what the test suite runs

Prints one table and writes the figures as JSON (--json); asserts nothing about time. Per backend and
round (the median is reported):
  * device -> SQLite: readings committed/s with every device publishing QoS 1 flat out (bench_ingest's
    flat_out: counted until the gateway has caught up);
  * device -> cloud: readings/s that reached a Mosquitto cloud broker, flat out, per reading and with
    `uplink.batch` (bench_uplink's sustained phase);
  * at 1,000 readings/s offered: end-to-end p99 (device publish -> cloud arrival) and CPU per reading:
    CPU seconds of the gateway, plus its Mosquitto child for that backend, per reading delivered;
  * cloud back after an outage: the cloud broker stops for --outage seconds while devices publish at
    200/s, then starts again: seconds from its start to the first reading that arrives;
  * RSS of the gateway (plus Mosquitto) with every device connected, after the 1,000/s phase.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from tests.bench.bench_ingest import close_all, connect_all, flat_out, started
from tests.bench.bench_uplink import CloudCounter, gateway_with_uplink, sustained
from tests.bench.common import percentile, run_and_report
from tests.bench.mqttload import run_load
from tests.fixtures.mosquitto import MosquittoBroker

BACKENDS = ("embedded", "mosquitto")


def _processes(pid: int) -> list[psutil.Process]:
    """The gateway and, for the mosquitto backend, its Mosquitto child."""
    gateway = psutil.Process(pid)
    return [gateway, *(c for c in gateway.children() if c.name() == "mosquitto")]


def _cpu(procs: list[psutil.Process]) -> float:
    return sum(float(t.user + t.system) for t in (p.cpu_times() for p in procs))


async def to_cloud(backend: str, ids: list[str], folder: Path, cloud: MosquittoBroker, counter: CloudCounter,
                   seconds: float, outage: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    for name in ("cloud", "batched"):
        (folder / name).mkdir()
    # A gateway id of its own per gateway: msgIds are "<gateway id>:<seq>", and readings a gateway left queued in
    # the counter's session while the cloud was down must not pass for the next gateway's.
    async with gateway_with_uplink(ids, folder / "cloud", cloud.port, batch=False, backend=backend,
                                   gateway_id=f"gw-{folder.name}") as gw:
        procs = _processes(gw.pid)
        devices = await connect_all(gw, ids, 1)  # type: ignore[arg-type]
        figures["cloud_rate"], figures["cloud_lost"] = await sustained(devices, counter, seconds)

        counter.reset()
        counter.latencies, counter.measure = [], True
        cpu0 = _cpu(procs)
        sent_before = sum(d.sent for d in devices)
        await run_load(devices, seconds=seconds, rate=1000.0)
        await counter.wait_for(sum(d.sent for d in devices) - sent_before)
        counter.measure = False
        figures["cpu_ms_per_reading"] = 1000 * (_cpu(procs) - cpu0) / max(counter.count, 1)
        figures["p99_ms_at_1000"] = percentile(counter.latencies, 99) * 1000
        figures["rss_mb"] = sum(p.memory_info().rss for p in procs) / 2**20

        # The cloud goes away while the devices go on at 200/s, then comes back.
        load = asyncio.create_task(run_load(devices, seconds=outage + 30.0, rate=200.0))
        await asyncio.sleep(1.0)
        cloud.stop()
        await asyncio.sleep(outage)
        counter.reset()
        cloud.start()
        back = time.time()
        await counter.wait_for(1, quiet=30.0, poll=0.01)
        figures["first_reading_after_outage_s"] = (counter.last - back) if counter.count else float("nan")
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        await close_all(devices)

    async with gateway_with_uplink(ids, folder / "batched", cloud.port, batch=True, backend=backend,
                                   gateway_id=f"gw-{folder.name}-batched") as gw:
        devices = await connect_all(gw, ids, 1)  # type: ignore[arg-type]
        figures["cloud_batched_rate"], figures["cloud_batched_lost"] = await sustained(devices, counter, seconds)
        await close_all(devices)
    return figures


async def to_sqlite(backend: str, ids: list[str], folder: Path, seconds: float) -> dict[str, float]:
    (folder / "sqlite").mkdir()
    async with started("gateway", ids, folder / "sqlite", backend=backend) as target:
        r = await flat_out(target, ids, 1, seconds)
    return {"sqlite_rate": r["rate"]}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ids = [f"AP-{i:03d}" for i in range(1, args.devices + 1)]
    rounds: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        work = Path(tmp)
        cloud = MosquittoBroker(work / "cloud-broker", persistence=True)
        cloud.start()
        counter = CloudCounter(cloud.port)
        await counter.start()
        try:
            for round_no in range(args.repeat):
                for backend in args.backends:
                    folder = work / f"{backend}-{round_no}"
                    folder.mkdir()
                    figures = await to_sqlite(backend, ids, folder, args.seconds)
                    figures.update(await to_cloud(backend, ids, folder, cloud, counter, args.seconds, args.outage))
                    for key, value in figures.items():
                        rounds.setdefault(f"{backend}_{key}", []).append(value)
        finally:
            await counter.stop()
            cloud.stop()
    results: dict[str, Any] = {"devices": args.devices, "seconds": args.seconds, "repeat": args.repeat,
                               "outage_s": args.outage, "backends": list(args.backends)}
    results.update({key: statistics.median(values) for key, values in rounds.items()})
    return results


ROWS = (
    ("device -> SQLite, flat out (readings/s)", "sqlite_rate", "{:.0f}"),
    ("device -> cloud, per reading (readings/s)", "cloud_rate", "{:.0f}"),
    ("device -> cloud, uplink.batch (readings/s)", "cloud_batched_rate", "{:.0f}"),
    ("lost (per reading / batched)", None, None),
    ("CPU per reading at 1,000/s (ms)", "cpu_ms_per_reading", "{:.3f}"),
    ("p99 device -> cloud at 1,000/s (ms)", "p99_ms_at_1000", "{:.1f}"),
    ("cloud back -> first reading (s)", "first_reading_after_outage_s", "{:.2f}"),
    ("RSS, gateway (+ Mosquitto) (MB)", "rss_mb", "{:.1f}"),
)


def report(r: dict[str, Any]) -> str:
    backends = r["backends"]
    lines = [f"broker backends: {r['devices']} devices, {r['seconds']} s phases, median of {r['repeat']}, "
             f"cloud outage {r['outage_s']:.0f} s",
             f"  {'':44}" + "".join(f"{b:>14}" for b in backends)]
    for label, key, fmt in ROWS:
        if key is None:
            cells = [f"{r[f'{b}_cloud_lost']:.0f} / {r[f'{b}_cloud_batched_lost']:.0f}" for b in backends]
        else:
            cells = [str(fmt).format(r[f"{b}_{key}"]) for b in backends]
        lines.append(f"  {label:44}" + "".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--outage", type=float, default=10.0, help="seconds the cloud broker is down")
    parser.add_argument("--backends", type=lambda s: tuple(s.split(",")), default=BACKENDS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 10 devices, 1 s phases, 1 round")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.seconds, args.repeat, args.outage = 10, 1.0, 1, 2.0
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
