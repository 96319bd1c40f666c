"""Panel benchmark: what open panels cost the gateway (live streams, page loads), measured on its own process.

    .venv/bin/python -m tests.bench.bench_panel            # 100 purifiers x 1 reading / 10 s, 20 streams, 60 s
    .venv/bin/python -m tests.bench.bench_panel --smoke    # seconds; what the test suite runs

The gateway runs as its own process (`edge-gateway run`) with users configured; the purifiers are the
firmware simulator; each "panel" is a logged-in session reading /panel/events with aiohttp, as a browser's
EventSource does. Prints (asserts nothing about time):
  * the overview page with every device: server response time (request to last byte), p50 and max;
  * gateway CPU (% of one core) over the same window without any stream and with the streams open, and the
    events the streams received (each reading of each device reaches each stream);
  * gateway RSS before the panels, and after the streams and a round of every page and chart span.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from tests.bench.bench_control import connect_purifiers, gateway_process
from tests.bench.bench_ingest import HOST
from tests.bench.common import percentile, run_and_report
from tests.fixtures.panel import TOKENS, PanelClient, users_config


async def wait_online(http: aiohttp.ClientSession, base: str, count: int, limit: float = 30.0) -> None:
    headers = {"Authorization": f"Bearer {TOKENS['script-view'][1]}"}
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        async with http.get(f"{base}/api/device/list/all", headers=headers) as r:
            devices = await r.json()
        if sum(1 for d in devices if d["online"]) == count:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("purifiers did not all come online")


async def cpu_percent(proc: psutil.Process, seconds: float) -> float:
    before = proc.cpu_times()
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    after = proc.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return float(100.0 * used / (time.monotonic() - t0))


async def read_stream(http: aiohttp.ClientSession, base: str, counts: list[int], index: int,
                      opened: asyncio.Event) -> None:
    async with http.get(f"{base}/panel/events", timeout=aiohttp.ClientTimeout(total=None)) as resp:
        assert resp.status == 200, resp.status
        opened.set()
        async for line in resp.content:
            if line.startswith(b"event: device"):
                counts[index] += 1


async def page_round(c: PanelClient, ids: list[str]) -> None:
    """Every kind of page and chart a user opens, once."""
    for path in ("/", "/gateway", f"/device/{ids[0]}", *(f"/panel/series/{ids[0]}?span={s}"
                                                          for s in ("hour", "day", "week"))):
        status, _ = await c.call("GET", path)
        assert status == 200, (path, status)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    ids = [f"AP-{i:03d}" for i in range(1, args.devices + 1)]
    out: dict[str, Any] = {"devices": args.devices, "streams": args.streams, "interval_s": args.interval,
                           "window_s": args.window}
    with tempfile.TemporaryDirectory(prefix="bench-panel-") as tmp:
        rooms = {d: f'room = "Floor {i % 5 + 1}"' for i, d in enumerate(ids)}
        async with gateway_process(ids, Path(tmp), device_lines=rooms, extra=users_config()) as (
                gateway, mqtt_port, api_port, _):
            proc = psutil.Process(gateway.pid)
            base = f"http://{HOST}:{api_port}"
            sims, tasks = await connect_purifiers(ids, mqtt_port, args.interval)
            sessions: list[aiohttp.ClientSession] = []
            readers: list[asyncio.Task[None]] = []
            try:
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                    await wait_online(http, base, len(ids))
                    admin = PanelClient(base, http)
                    await admin.login("ada")
                    await asyncio.sleep(min(args.interval, 2.0))  # every purifier has sent a reading
                    out["rss_mb_before"] = proc.memory_info().rss / 2**20
                    timings = []
                    for _ in range(args.page_loads):
                        t0 = time.perf_counter()
                        status, page = await admin.call("GET", "/")
                        timings.append((time.perf_counter() - t0) * 1000)
                        assert status == 200 and page.count("<tr data-device=") == len(ids)
                    out["overview_ms_p50"] = percentile(timings, 50)
                    out["overview_ms_max"] = max(timings)
                    out["overview_kib"] = len(page.encode()) / 1024

                    out["cpu_pct_without_panels"] = await cpu_percent(proc, args.window)
                    counts = [0] * args.streams
                    for i in range(args.streams):
                        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
                        sessions.append(session)
                        client = PanelClient(base, session)
                        await client.login("vera")
                        opened = asyncio.Event()
                        readers.append(asyncio.create_task(read_stream(session, base, counts, i, opened)))
                        await asyncio.wait_for(opened.wait(), 10)
                    await asyncio.sleep(1.0)  # the snapshots are sent
                    start = sum(counts)
                    out["cpu_pct_with_panels"] = await cpu_percent(proc, args.window)
                    out["events_per_s"] = (sum(counts) - start) / args.window
                    out["expected_events_per_s"] = args.streams * args.devices / args.interval
                    for _ in range(3):
                        await page_round(admin, ids)
                    out["rss_mb_after"] = proc.memory_info().rss / 2**20
            finally:
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                for session in sessions:
                    await session.close()
                for s in sims:
                    s.stop()
                await asyncio.wait(tasks, timeout=10)
    out["cpu_pct_panels_cost"] = out["cpu_pct_with_panels"] - out["cpu_pct_without_panels"]
    out["rss_mb_growth"] = out["rss_mb_after"] - out["rss_mb_before"]
    out["events_received_share"] = out["events_per_s"] / out["expected_events_per_s"]
    return out


def report(r: dict[str, Any]) -> str:
    return "\n".join([
        f"panel benchmark: {r['devices']} simulated purifiers x 1 reading / {r['interval_s']:g} s, "
        f"{r['streams']} open live streams, {r['window_s']:g} s windows",
        f"  overview with {r['devices']} devices ({r['overview_kib']:.0f} KiB): server response p50 "
        f"{r['overview_ms_p50']:.1f} ms, max {r['overview_ms_max']:.1f} ms",
        f"  gateway CPU: {r['cpu_pct_without_panels']:.2f} % of a core without panels, "
        f"{r['cpu_pct_with_panels']:.2f} % with {r['streams']} streams (cost {r['cpu_pct_panels_cost']:+.2f} %); "
        f"{r['events_per_s']:.0f} events/s received of {r['expected_events_per_s']:.0f} expected",
        f"  gateway RSS: {r['rss_mb_before']:.1f} MB before the panels, {r['rss_mb_after']:.1f} MB after the streams "
        f"and every page and chart ({r['rss_mb_growth']:+.1f} MB)",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between readings per purifier")
    parser.add_argument("--window", type=float, default=60.0, help="seconds each CPU figure is measured over")
    parser.add_argument("--page-loads", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.streams, args.interval, args.window, args.page_loads = 10, 3, 1.0, 3.0, 5
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
