"""Modbus benchmark: a poll cycle of 10 slaves x 20 points on one simulated serial line.

    .venv/bin/python -m tests.bench.bench_modbus            # 5 cycles per case
    .venv/bin/python -m tests.bench.bench_modbus --smoke    # one cycle per case; what the test suite runs

The slaves are the firmware simulator (`edge-gateway-sim modbus`, its own process) on a pty; it emulates
the line's speed (each answer leaves after the request's and the answer's wire time at the baud rate),
so a cycle can be compared with the physical limit. The bus is the gateway's (drivers/modbus/bus.py:
pymodbus, RTU framing, the lock and the inter-frame gap), in this process. Each slave serves 20 float32
points of the SDM630 map (40 registers). Prints (asserts nothing about time), at 9,600 and 115,200 baud:
  * a poll cycle with merged reads, and with one read per point: wall time, requests, bytes on the wire,
    and the ratio to the wire time (bytes x 10 bits / baud) and to wire time plus the inter-frame gaps;
  * process CPU (this process: bus, pymodbus, decoding, readings handed over) per polled point;
  * a merged cycle at 9,600 baud with one of the 10 slaves silent: what it added, beside its timeout;
  * the merged/per-point request ratio over every point of the shipped maps;
  * RSS added by the Modbus code with 2 buses of 10 slaves each, polled once, over the gateway's imports.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import psutil
import structlog

from gateway.malloc_tuning import limit_arenas
from tests.bench.common import REPO, run_and_report

SLAVES = 10
POINTS = 20
BAUDS = (9600, 115200)
TIMEOUT_S = 0.5  # per answer


def rss_mb() -> float:
    return float(psutil.Process(os.getpid()).memory_info().rss) / 2**20


class CountingIntake:
    """A DeviceIntake that counts what the bus hands over."""

    def __init__(self) -> None:
        self.readings = 0
        self.points = 0

    async def accept(self, reading: Any) -> None:
        self.readings += 1
        self.points += len(reading.metrics)

    async def presence(self, device_id: str, online: bool, reason: str) -> None:
        return None

    async def acknowledged(self, device_id: str, ack: Any) -> None:
        return None

    async def quarantine(self, **_: Any) -> None:
        return None

    def command_ready(self, device_id: str) -> None:
        return None

    def receipt(self) -> None:
        return None

    def seen(self, device_id: str, at: float) -> None:
        return None


def bench_map(folder: Path) -> Path:
    """20 float32 points: the first 20 input registers of the SDM630 map."""
    text = (REPO / "config" / "registers" / "eastron_sdm630.toml").read_text(encoding="utf-8")
    points = [p for p in tomllib.loads(text)["points"] if p["input_type"] == "input"][:POINTS]
    lines = ['name = "bench: 20 points of the SDM630"', "max_registers_per_read = 80", "max_gap = 40"]
    for p in points:
        lines += ["[[points]]", f'name = "{p["name"]}"', f'metric = "{p["metric"]}"', f"address = {p['address']}",
                  'input_type = "input"', 'data_type = "float32"']
    path = folder / "bench20.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def start_sim(pty: Path, map_path: Path, baudrate: int, *, tcp: str | None = None,
                    silent: int | None = None) -> asyncio.subprocess.Process:
    args = [sys.executable, "-m", "firmware_sim", "--log-level", "WARNING", "modbus", "--pty", str(pty),
            "--baudrate", str(baudrate)]
    if tcp:
        args += ["--tcp", tcp]
    if silent is not None:
        args += ["--fault", f"{silent}=silent"]
    for unit in range(1, SLAVES + 1):
        args += ["--slave", f"{unit}={map_path}"]
    proc = await asyncio.create_subprocess_exec(*args, cwd=REPO)
    for _ in range(500):
        if pty.exists():  # noqa: ASYNC240 - a stat of a tmp path, polled until the simulator made it
            return proc
        await asyncio.sleep(0.01)
    raise RuntimeError("the simulator did not make its pty")


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)


def wire_bytes(plan: list[Any]) -> int:
    """Request and answer bytes of one pass over a read plan (RTU: 8-byte request, 5 + data answer)."""
    return sum(8 + 5 + (2 * r.count if r.table in ("holding", "input") else (r.count + 7) // 8) for r in plan)


async def poll_cycles(port: str, map_path: Path, baudrate: int, cycles: int, *, per_point: bool,
                      silent: int = 0) -> dict[str, Any]:
    from drivers.modbus.bus import BusConfig, ModbusBus
    from drivers.modbus.planner import plan_per_point
    from drivers.modbus.register_maps import load_map
    from drivers.modbus.slaves import LogicalDevice, SlaveConfig
    from drivers.modbus.timing import inter_frame_gap, wire_seconds
    from gateway.core.clock import ManualClock
    from gateway.core.metrics import Metrics

    register_map = load_map(map_path)
    slaves = [SlaveConfig(u, register_map, (LogicalDevice(f"slave-{u}", "modbus-sensor"),), 10.0, TIMEOUT_S)
              for u in range(1, SLAVES + 1)]
    intake = CountingIntake()
    clock = ManualClock()
    bus = ModbusBus(BusConfig("bench", port, baudrate=baudrate, timeout=TIMEOUT_S), slaves,
                    intake=intake, clock=clock, metrics=Metrics())  # type: ignore[arg-type]
    if per_point:
        for slave in bus.slaves:
            slave.plan = plan_per_point(slave.points)
    await bus.open()
    try:
        await bus.poll_due()  # warm-up: the first cycle pays imports and first allocations
        walls, cpus = [], []
        for _ in range(cycles):
            clock.advance(10.0)
            for slave in bus.slaves:  # every slave due, a failing one too (the worst case: no back-off yet)
                slave.due = clock.monotonic()
            points_before = intake.points
            cpu, wall = time.process_time(), time.perf_counter()
            assert await bus.poll_due() == SLAVES
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            assert intake.points - points_before == (SLAVES - silent) * POINTS, "a cycle lost points"
    finally:
        bus.close()
    requests = sum(len(s.plan) for s in bus.slaves)
    nbytes = sum(wire_bytes(s.plan) for s in bus.slaves)
    wire = wire_seconds(nbytes, baudrate)
    gaps = 2 * requests * inter_frame_gap(baudrate)
    wall = sorted(walls)[len(walls) // 2]
    return {"requests": requests, "bytes": nbytes, "wire_s": wire, "wire_and_gaps_s": wire + gaps,
            "cycle_s": wall, "ratio_to_wire": wall / wire, "ratio_to_wire_and_gaps": wall / (wire + gaps),
            "cpu_us_per_point": sorted(cpus)[len(cpus) // 2] / (SLAVES * POINTS) * 1e6}


def shipped_request_ratio() -> tuple[int, int]:
    from drivers.modbus.planner import ReadLimits, plan_per_point, plan_reads
    from drivers.modbus.register_maps import load_map

    merged = single = 0
    for path in sorted((REPO / "config" / "registers").glob("*.toml")):
        m = load_map(path)
        points = m.points()
        merged += len(plan_reads(points, ReadLimits(m.spec.max_registers_per_read, m.spec.max_coils_per_read,
                                                    m.spec.max_gap)))
        single += len(plan_per_point(points))
    return merged, single


async def rss_two_buses(folder: Path, map_path: Path) -> dict[str, float]:
    """RSS over the gateway's imports of 2 buses x 10 slaves (one on a pty, one over TCP), polled once.

    The simulators start first, so the figure holds the Modbus code only, not this benchmark's own tools."""
    tcp_port = _free_port()
    sims = [await start_sim(folder / "tty-rss", map_path, 0),
            await start_sim(folder / "tty-rss2", map_path, 0, tcp=f"127.0.0.1:{tcp_port}")]
    try:
        import gateway.app  # noqa: F401 - today's daemon imports: the baseline

        before = rss_mb()
        from drivers.modbus.bus import BusConfig, ModbusBus
        from drivers.modbus.register_maps import load_map
        from drivers.modbus.slaves import LogicalDevice, SlaveConfig
        from gateway.core.clock import ManualClock
        from gateway.core.metrics import Metrics

        register_map = load_map(map_path)
        buses = []
        for b, port in enumerate((str(folder / "tty-rss"), f"socket://127.0.0.1:{tcp_port}")):
            slaves = [SlaveConfig(u, register_map, (LogicalDevice(f"bus{b}-slave-{u}", "modbus-sensor"),), 10.0, 1.0)
                      for u in range(1, SLAVES + 1)]
            buses.append(ModbusBus(BusConfig(f"bus{b}", port), slaves, intake=CountingIntake(),  # type: ignore[arg-type]
                                   clock=ManualClock(), metrics=Metrics()))
        for bus in buses:
            await bus.open()
            await bus.poll_due()
        after = rss_mb()
        for bus in buses:
            bus.close()
    finally:
        for sim in sims:
            await stop(sim)
    return {"rss_mb_gateway_imports": before, "rss_mb_with_two_buses": after, "rss_mb_added": after - before}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    cycles = 1 if args.smoke else args.cycles
    results: dict[str, Any] = {"slaves": SLAVES, "points_per_slave": POINTS, "cycles": cycles}
    with tempfile.TemporaryDirectory(prefix="bench-modbus-") as tmp:
        folder = Path(tmp)
        map_path = bench_map(folder)
        results.update(await rss_two_buses(folder, map_path))
        for baud in BAUDS:
            pty = folder / f"tty-{baud}"
            sim = await start_sim(pty, map_path, baud)
            try:
                for per_point in (False, True):
                    case = f"{'single' if per_point else 'merged'}_{baud}"
                    for key, value in (await poll_cycles(str(pty), map_path, baud, cycles,
                                                         per_point=per_point)).items():
                        results[f"{case}_{key}"] = float(value)
            finally:
                await stop(sim)
        # one silent slave among the 10 (its back-off aside: it is due every cycle here)
        pty = folder / "tty-silent"
        sim = await start_sim(pty, map_path, 9600, silent=SLAVES // 2)
        try:
            silent = await poll_cycles(str(pty), map_path, 9600, cycles, per_point=False, silent=1)
        finally:
            await stop(sim)
        results["silent_9600_cycle_s"] = silent["cycle_s"]
        results["silent_9600_added_s"] = silent["cycle_s"] - results["merged_9600_cycle_s"]
        results["timeout_s"] = TIMEOUT_S
    merged, single = shipped_request_ratio()
    results["shipped_maps_requests_merged"] = float(merged)
    results["shipped_maps_requests_single"] = float(single)
    results["shipped_maps_request_ratio"] = single / merged
    results["cpu_us_per_point"] = results["merged_115200_cpu_us_per_point"]
    return results


def report(r: dict[str, Any]) -> str:
    lines = [f"Modbus poll cycle: {r['slaves']} slaves x {r['points_per_slave']} float32 points, one simulated "
             f"line (median of {r['cycles']} cycle(s))"]
    for baud in BAUDS:
        for case in ("merged", "single"):
            k = f"{case}_{baud}_"
            lines.append(
                f"  {baud:>6} baud {case:>6}: {r[k + 'requests']:4.0f} requests, {r[k + 'bytes']:5.0f} bytes, cycle "
                f"{r[k + 'cycle_s'] * 1000:8.1f} ms = {r[k + 'ratio_to_wire']:.2f}x wire time "
                f"({r[k + 'wire_s'] * 1000:.1f} ms), {r[k + 'ratio_to_wire_and_gaps']:.2f}x wire + gaps; "
                f"CPU {r[k + 'cpu_us_per_point']:.1f} us/point")
    lines.append(f"  one silent slave among {r['slaves']} at 9600 baud: "
                 f"cycle {r['silent_9600_cycle_s'] * 1000:.1f} ms, "
                 f"+{r['silent_9600_added_s'] * 1000:.1f} ms (its timeout: {r['timeout_s'] * 1000:.0f} ms)")
    lines.append(f"  shipped maps: {r['shipped_maps_requests_single']:.0f} reads one per point -> "
                 f"{r['shipped_maps_requests_merged']:.0f} merged ({r['shipped_maps_request_ratio']:.1f}x fewer)")
    lines.append(f"  RSS: {r['rss_mb_gateway_imports']:.1f} MB with the gateway's imports, "
                 f"{r['rss_mb_with_two_buses']:.1f} MB with 2 buses x {r['slaves']} slaves polled "
                 f"(+{r['rss_mb_added']:.1f} MB)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one cycle per case (the test suite's)")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # no bus_open lines
    limit_arenas(1)  # as `edge-gateway run` does, so the RSS figure is the daemon's
    run_and_report(parser.parse_args(), bench, report)


if __name__ == "__main__":
    main()
