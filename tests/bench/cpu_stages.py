"""CPU per reading, end to end, and what each stage of the path costs: device -> embedded broker -> ingest
-> SQLite -> outbox -> uplink -> cloud Mosquitto, at a fixed offer (1,000 readings/s, 100 devices, QoS 1).

    .venv/bin/python -m tests.bench.cpu_stages               # 3 rounds of 20 s, then a 20 s profile (~2 min)
    .venv/bin/python -m tests.bench.cpu_stages --smoke       # seconds: 5 devices, 100/s
    .venv/bin/python -m tests.bench.cpu_stages --no-profile  # the total only

The total: the gateway process's CPU seconds (user + system, every thread) over the readings that reached the
cloud, median of --repeat rounds. The breakdown: py-spy (a sampling profiler outside the process: it adds no
CPU inside it) records the gateway's stacks at --sample-rate Hz while the same load runs; each sample is
given to the stage of its innermost frame that a rule of STAGES names (stages_of), and a stage's share of
the samples times the profiled window's CPU per reading is what one reading costs there. py-spy is a
development tool (`pip install py-spy`), not a dependency; without it only the total is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.bench.bench_ingest import close_all, connect_all
from tests.bench.bench_uplink import CloudCounter, cpu_per_reading, gateway_with_uplink
from tests.bench.common import run_and_report
from tests.fixtures.mosquitto import MosquittoBroker

# (stage, substring of a frame "function (file:line)"). A stack's stage is decided by its innermost frame that a
# rule names, so a library's frames count for the stage of the code that called them; library rules name only
# frames whose stage is clear whoever called them (paho's reads and writes, amqtt's packet parsing).
STAGES: tuple[tuple[str, str], ...] = (
    # store
    ("store: commit (SQLite, worker thread)", "run (gateway/store/transaction.py"),
    ("store: commit (SQLite, worker thread)", "gateway/store/checkpoints.py"),
    ("store: plan rows", "gateway/store/planner.py"),
    ("store: plan rows", "gateway/store/record_kinds.py"),
    ("store: plan rows", "bulk (gateway/store/transaction.py"),
    ("store: writer loop, receipts, hand-off", "gateway/store/"),
    # uplink
    ("uplink: PUBACK read, handling", "loop_read (paho/"),
    ("uplink: PUBACK read, handling", "_acknowledged (gateway/uplink/client.py"),
    ("uplink: outbox delete (put, flush)", "_delete_acked (gateway/uplink/client.py"),
    ("uplink: socket writes", "loop_write (paho/"),
    ("uplink: socket writes", "loop_misc (paho/"),
    ("uplink: encode", "gateway/uplink/messages.py"),
    ("uplink: encode", "_pack (gateway/uplink/client.py"),
    ("uplink: publish (paho)", "publish (paho/"),
    ("uplink: publish (paho)", "gateway/uplink/acks.py"),
    ("outbox: hand-over to the live lane", "_on_outbox (gateway/uplink/client.py"),
    ("outbox: hand-over to the live lane", "_live_lane (gateway/uplink/client.py"),
    ("outbox: backlog reads", "gateway/uplink/outbox_reader.py"),
    ("uplink: lanes, aiomqtt", "gateway/uplink/"),
    ("uplink: lanes, aiomqtt", "aiomqtt/"),
    # ingest
    ("ingest: decode, validate", "drivers/"),
    ("ingest: decode, validate", "nesting_depth (gateway/ingest/limits.py"),
    ("ingest: resend check", "gateway/ingest/resends.py"),
    ("ingest: registry, metrics", "gateway/core/registry.py"),
    ("ingest: registry, metrics", "gateway/core/metrics.py"),
    ("ingest: route, accept", "gateway/ingest/"),
    # broker
    ("broker: PUBACK to device", "gateway/broker/amqtt/publish_flow.py"),
    ("broker: routing, ACL", "gateway/broker/amqtt/routing.py"),
    ("broker: routing, ACL", "gateway/broker/acl.py"),
    ("broker: receive, parse", "gateway/broker/"),
    ("broker: receive, parse", "amqtt/"),
    ("broker: receive, parse", "asyncio/streams.py"),
    ("broker: receive, parse", "_read_ready (asyncio/selector_events.py"),
    # the rest
    ("store: worker thread hand-back", "_connection_worker_thread (aiosqlite/"),
    ("logging", "structlog/"),
    ("logging", "logging/"),
)
OTHER = "event loop, other"
# Innermost frames of a thread that waits (py-spy's own idle test does not tell them apart on every
# machine): the event loop in epoll, aiosqlite's and the executor's workers waiting for work, thread waits.
IDLE = ("EpollSelector.select (selectors.py", "_connection_worker_thread (aiosqlite/", "_worker (concurrent/",
        "wait (threading.py", "get (queue.py")


def stage_of(frames: list[str]) -> str | None:
    """The stage of one stack (frames outermost first); None for a thread that waits."""
    if frames and frames[-1].startswith(IDLE):
        return None
    for frame in reversed(frames):
        for stage, needle in STAGES:
            if needle in frame:
                return stage
    return OTHER


def stages_of(collapsed: Iterable[str]) -> Counter[str]:
    """Busy samples per stage from py-spy's raw output: one stack a line, `frame;frame;... count`."""
    counts: Counter[str] = Counter()
    for line in collapsed:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stage = stage_of(stack.split(";"))
        if stage is not None:
            counts[stage] += int(count)
    return counts


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ids = [f"AP-{i:03d}" for i in range(1, args.devices + 1)]
    results: dict[str, Any] = {"devices": args.devices, "rate": args.rate, "seconds": args.seconds,
                               "repeat": args.repeat}
    # py-spy beside this interpreter (a venv's bin/) or on PATH
    py_spy = (shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
              if args.profile else None)
    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        work = Path(tmp)
        cloud = MosquittoBroker(work / "cloud", persistence=True)
        cloud.start()
        counter = CloudCounter(cloud.port)
        await counter.start()
        try:
            folder = work / "gateway"
            folder.mkdir()
            async with gateway_with_uplink(ids, folder, cloud.port, batch=False) as gw:
                devices = await connect_all(gw, ids, 1)
                await cpu_per_reading(gw, devices, counter, args.rate, min(2.0, args.seconds))  # warm-up
                rounds = []
                for _ in range(args.repeat):
                    cpu, delivered = await cpu_per_reading(gw, devices, counter, args.rate, args.seconds)
                    rounds.append(1000 * cpu / max(delivered, 1))
                    results["delivered"] = delivered
                results["cpu_ms_per_reading"] = statistics.median(rounds)
                results["cpu_ms_per_reading_rounds"] = rounds
                if py_spy is not None:
                    raw = work / "stacks.txt"
                    spy = await asyncio.create_subprocess_exec(
                        py_spy, "record", "--pid", str(gw.pid), "--rate", str(args.sample_rate), "--format", "raw",
                        "--output", str(raw), "--duration", str(int(args.seconds) + 1),
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                    )
                    await asyncio.sleep(0.5)  # attached
                    cpu, delivered = await cpu_per_reading(gw, devices, counter, args.rate, args.seconds)
                    await asyncio.wait_for(spy.wait(), 30)
                    per_reading = 1000 * cpu / max(delivered, 1)
                    results["profiled_cpu_ms_per_reading"] = per_reading
                    counts = stages_of(raw.read_text().splitlines()) if raw.exists() else Counter()
                    if args.stacks is not None and raw.exists():
                        shutil.copyfile(raw, args.stacks)
                    total = sum(counts.values())
                    results["samples"] = total
                    results["stages_us_per_reading"] = {
                        stage: 1000 * per_reading * n / total for stage, n in counts.most_common()
                    } if total else {}
                await close_all(devices)
        finally:
            await counter.stop()
            cloud.stop()
    return results


def report(r: dict[str, Any]) -> str:
    rounds = ", ".join(f"{v:.3f}" for v in r["cpu_ms_per_reading_rounds"])
    lines = [
        f"CPU per reading, device -> embedded broker -> SQLite -> uplink -> cloud: {r['devices']} devices, "
        f"{r['rate']:g} readings/s offered, QoS 1",
        f"  {r['cpu_ms_per_reading']:.3f} ms of the gateway's CPU per reading delivered (median of {r['repeat']}: "
        f"{rounds})",
    ]
    stages = r.get("stages_us_per_reading")
    if stages is None:
        lines.append("  no per-stage breakdown (py-spy not found, or --no-profile)")
    else:
        lines.append(f"  per stage (py-spy, {r['samples']} samples; {r['profiled_cpu_ms_per_reading']:.3f} ms "
                     "per reading in the profiled window):")
        lines.extend(f"    {us:7.1f} us  {stage}" for stage, us in stages.items())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0, help="readings/s offered, all devices together")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured round")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sample-rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--stacks", type=Path, help="also keep py-spy's raw stacks here")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.rate, args.seconds, args.repeat = 5, 100.0, 1.0, 1
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
