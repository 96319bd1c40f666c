"""Flood benchmark (issue 12): what connections that never log in, and oversized packets, cost the gateway.

    .venv/bin/python -m tests.bench.bench_flood            # 2,000 cycles, 1,000 idle sockets, 64 MB packets
    .venv/bin/python -m tests.bench.bench_flood --smoke    # seconds; what the test suite runs

The gateway runs as `edge-gateway run` in a child process with the default limits (devices AP-01, which
logs in during each phase, and AP-02), its log going to a file. The attacker connects from 127.0.0.2 (or
from 127.0.1.x, many addresses), the devices from 127.0.0.1. Phases, one gateway each:
  * cycles: connect+close cycles, 50 at a time;
  * idle, one source / many sources: sockets that never send anything;
  * big packets: a CONNECT announcing 64 MB, then (logged in) a PUBLISH announcing 64 MB, each streamed
    until the gateway closes the connection;
  * out of files: the gateway under a 128-file limit with the limits out of the way, 300 idle sockets
    from loopback: the listener's accept fails (EMFILE) for as long as they stay.
Reported per phase: open files (peak, and how long until back to the baseline), the device's login time
(max over logins every 0.2 s during the phase), RSS growth, and the log's growth. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.bench.bench_ingest import wait_port
from tests.bench.common import DAEMON_ARGV, run_and_report
from tests.bench.mqttload import connect_packet, remaining_length
from tests.fixtures.gateway import cheap_hash, device_password, free_port, write_config

HOST = "127.0.0.1"
ATTACKER = "127.0.0.2"


@dataclass
class Gateway:
    proc: asyncio.subprocess.Process
    port: int
    log: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)

    def files(self) -> int:
        return int(self.ps.num_fds())

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def log_bytes(self) -> int:
        return self.log.stat().st_size


def _limit_files(files: int) -> Callable[[], None]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    return limit


@contextlib.asynccontextmanager
async def gateway(
    workdir: Path,
    *,
    extra_broker: str = "",
    max_files: int | None = None,
    devices: Sequence[str] = ("AP-01", "AP-02"),
    hashes: Mapping[str, str] | None = None,
) -> AsyncIterator[Gateway]:
    """The gateway process; `hashes`: device -> its password hash in the config (default: cheap test hashes)."""
    port = free_port()
    config = write_config(workdir, devices=devices, port=port, extra_broker=extra_broker, api="enabled = false")
    if hashes:
        text = config.read_text()
        for device_id in devices:  # (each device's test hash is unique: its own password, its own salt)
            text = text.replace(cheap_hash(device_password(device_id)), hashes[device_id])
        config.write_text(text)
    log = workdir / "gateway.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *DAEMON_ARGV, "--config", str(config), stdout=out, stderr=out,
            preexec_fn=_limit_files(max_files) if max_files else None,
        )
    try:
        gw = Gateway(proc, port, log)
        await wait_port(port, proc)
        await asyncio.sleep(0.5)
        yield gw
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def device_login(gw: Gateway, timeout: float = 5.0) -> float:
    """Seconds from connect to the CONNACK of AP-01 (retried until `timeout`: the port may not be open yet)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        try:
            async with asyncio.timeout(max(0.1, started + timeout - loop.time())):
                reader, writer = await asyncio.open_connection(HOST, gw.port)
                try:
                    writer.write(connect_packet("AP-01", "AP-01", device_password("AP-01")))
                    if await reader.readexactly(4) == b"\x20\x02\x00\x00":
                        return loop.time() - started
                finally:
                    writer.close()
        except (OSError, asyncio.IncompleteReadError):
            if loop.time() > started + timeout:
                raise
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def watching(gw: Gateway) -> AsyncIterator[dict[str, float]]:
    """During the block: peak open files and RSS (every 20 ms), and the device's slowest login (every 0.2 s)."""
    seen = {"files_peak": float(gw.files()), "rss_peak": float(gw.rss()), "login_max_s": 0.0, "logins": 0.0}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                seen["files_peak"] = float(max(seen["files_peak"], gw.files()))
                seen["rss_peak"] = float(max(seen["rss_peak"], gw.rss()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)

    async def logins() -> None:
        while not stop.is_set():
            try:
                took = await device_login(gw, timeout=10)
            except OSError:
                took = 10.0
            seen["login_max_s"] = max(seen["login_max_s"], took)
            seen["logins"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    tasks = [asyncio.create_task(sample()), asyncio.create_task(logins())]
    try:
        yield seen
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@contextlib.asynccontextmanager
async def peak_rss(gw: Gateway) -> AsyncIterator[dict[str, float]]:
    """During the block: the gateway's RSS before and at its peak (bytes, sampled every 10 ms)."""
    seen = {"before": float(gw.rss()), "peak": float(gw.rss())}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                seen["peak"] = float(max(seen["peak"], gw.rss()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)

    task = asyncio.create_task(sample())
    try:
        yield seen
    finally:
        stop.set()
        await task


async def back_to(gw: Gateway, files: int, limit: float) -> float:
    """Seconds until the gateway holds at most `files` open files (nan: not within `limit`)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while gw.files() > files:
        if loop.time() - started > limit:
            return float("nan")
        await asyncio.sleep(0.05)
    return loop.time() - started


async def raw_socket(source: str, port: int, timeout: float = 5.0) -> socket.socket | None:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), timeout)
    except (OSError, TimeoutError):
        sock.close()
        return None
    return sock


async def cycles(gw: Gateway, count: int) -> None:
    async def one() -> None:
        sock = await raw_socket(ATTACKER, gw.port)
        if sock is not None:
            sock.close()

    for start in range(0, count, 50):
        await asyncio.gather(*(one() for _ in range(min(50, count - start))))


async def open_idle(port: int, sources: list[str], count: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    for start in range(0, count, 50):
        batch = await asyncio.gather(*(raw_socket(sources[(start + i) % len(sources)], port)
                                       for i in range(min(50, count - start))))
        socks += [s for s in batch if s is not None]
    return socks


async def stream_until_closed(writer: asyncio.StreamWriter, total: int) -> int:
    """Write up to `total` bytes of filler; returns how many were written before the peer closed."""
    chunk = b"x" * 65536
    sent = 0
    try:
        while sent < total:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), 5)
            sent += len(chunk)
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
    return sent


async def big_packets(gw: Gateway, size: int) -> dict[str, float]:
    out: dict[str, float] = {}
    # A CONNECT announcing `size` bytes, before any login.
    rss0 = gw.rss()
    async with watching(gw) as seen:
        reader, writer = await asyncio.open_connection(HOST, gw.port, local_addr=(ATTACKER, 0))
        writer.write(b"\x10" + remaining_length(size) + b"\x00\x04MQTT\x04\x02\x00\x3c")
        out["connect_sent_mb"] = await stream_until_closed(writer, size) / 2**20
    out["connect_rss_growth_mb"] = (seen["rss_peak"] - rss0) / 2**20
    # A PUBLISH announcing `size` bytes, logged in.
    rss0 = gw.rss()
    async with watching(gw) as seen:
        reader, writer = await asyncio.open_connection(HOST, gw.port)
        writer.write(connect_packet("AP-02", "AP-02", device_password("AP-02")))  # (AP-01 is the watcher's)
        await reader.readexactly(4)
        topic = b"device/AP-02/data"
        writer.write(b"\x30" + remaining_length(size) + len(topic).to_bytes(2, "big") + topic)
        out["publish_sent_mb"] = await stream_until_closed(writer, size) / 2**20
    out["publish_rss_growth_mb"] = (seen["rss_peak"] - rss0) / 2**20
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    deadline = args.connect_timeout
    broker = f"connect_timeout_seconds = {deadline}"
    results: dict[str, Any] = {"cycles": args.cycles, "idle": args.idle, "packet_mb": args.packet_mb,
                               "connect_timeout_s": deadline}
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        workdir = Path(tmp)
        logs = 0

        async def phase(name: str, run: Callable[[Gateway], Any], **options: Any) -> None:
            nonlocal logs
            folder = workdir / name
            folder.mkdir()
            async with gateway(folder, **options) as gw:
                files0, log0 = gw.files(), gw.log_bytes()
                results[f"{name}_files_baseline"] = files0
                await run(gw)
                results[f"{name}_log_bytes"] = gw.log_bytes() - log0
                logs += gw.log_bytes() - log0

        async def run_cycles(gw: Gateway) -> None:
            files0 = gw.files()
            async with watching(gw) as seen:
                t0 = time.monotonic()
                await cycles(gw, args.cycles)
                results["cycles_s"] = time.monotonic() - t0
                results["cycles_back_to_baseline_s"] = await back_to(gw, files0 + 2, deadline + 5)
            results["cycles_files_peak"] = seen["files_peak"]
            results["cycles_login_max_ms"] = seen["login_max_s"] * 1000

        def run_idle(name: str, sources: list[str]) -> Callable[[Gateway], Any]:
            async def run(gw: Gateway) -> None:
                files0 = gw.files()
                async with watching(gw) as seen:
                    socks = await open_idle(gw.port, sources, args.idle)
                    results[f"{name}_opened"] = len(socks)
                    results[f"{name}_back_to_baseline_s"] = await back_to(gw, files0 + 2, deadline + 5)
                for sock in socks:
                    sock.close()
                results[f"{name}_files_peak"] = seen["files_peak"]
                results[f"{name}_login_max_ms"] = seen["login_max_s"] * 1000
            return run

        async def run_big(gw: Gateway) -> None:
            results.update(await big_packets(gw, args.packet_mb * 2**20))

        async def run_out_of_files(gw: Gateway) -> None:
            socks = await open_idle(gw.port, [HOST], args.emfile_sockets)
            await asyncio.sleep(args.emfile_seconds)  # the listener retries its accept every second meanwhile
            results["out_of_files_opened"] = len(socks)
            for sock in socks:
                sock.close()
            lines = gw.log.read_text(errors="replace").splitlines()
            results["out_of_files_accept_lines"] = sum("accept" in line for line in lines)
            results["out_of_files_tracebacks"] = sum("Traceback" in line for line in lines)

        await phase("cycles", run_cycles, extra_broker=broker)
        await phase("idle_one_source", run_idle("idle_one_source", [ATTACKER]), extra_broker=broker)
        await phase("idle_many_sources", run_idle("idle_many_sources", [f"127.0.1.{i}" for i in range(1, 51)]),
                    extra_broker=broker)
        await phase("big_packets", run_big, extra_broker=broker)
        await phase("out_of_files", run_out_of_files, max_files=128,
                    extra_broker=f"{broker}\nmax_pending_connections = 5000\nmax_connections = 5000")
        results["log_growth_kb"] = logs / 1024
    return results


def report(results: dict[str, Any]) -> str:
    r = results
    return "\n".join([
        f"flood benchmark: CONNECT deadline {r['connect_timeout_s']:g} s; log growth over all phases "
        f"{r['log_growth_kb']:.1f} KB",
        f"  {r['cycles']} connect+close cycles ({r['cycles_s']:.1f} s): open files {r['cycles_files_baseline']} -> "
        f"peak {r['cycles_files_peak']:.0f}, back to baseline {r['cycles_back_to_baseline_s']:.1f} s after; "
        f"device login max {r['cycles_login_max_ms']:.0f} ms",
        *(f"  {r['idle']} idle sockets, {label}: {r[f'{key}_opened']} connected, open files "
          f"{r[f'{key}_files_baseline']} -> peak {r[f'{key}_files_peak']:.0f}, back to baseline "
          f"{r[f'{key}_back_to_baseline_s']:.1f} s after; device login max {r[f'{key}_login_max_ms']:.0f} ms"
          for key, label in (("idle_one_source", "one source"), ("idle_many_sources", "50 sources"))),
        f"  {r['packet_mb']} MB CONNECT: {r['connect_sent_mb']:.1f} MB taken, RSS +{r['connect_rss_growth_mb']:.2f} MB;"
        f" {r['packet_mb']} MB PUBLISH: {r['publish_sent_mb']:.1f} MB taken, RSS +{r['publish_rss_growth_mb']:.2f} MB",
        f"  out of files (128): {r['out_of_files_opened']} sockets, log +{r['out_of_files_log_bytes'] / 1024:.1f} KB, "
        f"{r['out_of_files_accept_lines']} accept lines, {r['out_of_files_tracebacks']} tracebacks",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--packet-mb", type=int, default=64)
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--emfile-sockets", type=int, default=300)
    parser.add_argument("--emfile-seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="200 cycles, 100 idle sockets, 8 MB, 2 s deadline")
    args = parser.parse_args(argv)
    if args.smoke:
        args.cycles, args.idle, args.packet_mb, args.connect_timeout = 200, 100, 8, 2.0
        args.emfile_sockets, args.emfile_seconds = 150, 2.0
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
