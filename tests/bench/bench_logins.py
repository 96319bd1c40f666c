"""Login benchmark (issue 12, point 7): what password checks cost the gateway under a login storm.

    .venv/bin/python -m tests.bench.bench_logins           # 100 devices, 200 wrong passwords
    .venv/bin/python -m tests.bench.bench_logins --smoke   # seconds; what the test suite runs

The gateway runs as `edge-gateway run` (bench_flood.gateway) with real argon2 hashes, made the way
`edge-gateway hash-password` makes them (argon2id m = 19 MiB, t = 2, p = 1), and the default
broker.max_password_checks. Phases, one gateway each:
  * reconnect storm: every device logs in at once with its right password (a power cut ends): the time
    until the last CONNACK, and peak RSS;
  * wrong-password storm: 200 logins with wrong passwords, 20 at a time (from 20 addresses, so each
    source's back-off starts only after its own failures), for at most --storm-seconds: logins answered,
    and peak RSS against the RSS before;
  * the same storm against hashes made with argon2-cffi's default before (m = 64 MiB, t = 3, p = 4), as
    configs written before this change hold them.
Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from gateway.core.passwords import hash_password
from tests.bench.bench_flood import Gateway, gateway, peak_rss
from tests.bench.common import run_and_report
from tests.bench.mqttload import connect_packet
from tests.fixtures.gateway import device_password

HOST = "127.0.0.1"


async def connack(port: int, device: str, password: str, source: str = HOST) -> int:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    try:
        writer.write(connect_packet(device, device, password))
        return (await asyncio.wait_for(reader.readexactly(4), 120))[3]
    finally:
        writer.close()


async def reconnect_storm(gw: Gateway, devices: list[str]) -> dict[str, float]:
    async with peak_rss(gw) as rss:
        t0 = time.monotonic()
        codes = await asyncio.gather(*(connack(gw.port, d, device_password(d)) for d in devices))
        took = time.monotonic() - t0
    return {"storm_s": took, "storm_accepted": float(codes.count(0)), "storm_rss_before_mb": rss["before"] / 2**20,
            "storm_rss_peak_mb": rss["peak"] / 2**20}


async def wrong_password_storm(gw: Gateway, devices: list[str], logins: int, seconds: float) -> dict[str, float]:
    answered = [0]
    deadline = time.monotonic() + seconds

    async def worker(i: int) -> None:
        source = f"127.0.3.{i + 1}"
        for n in range(i, logins, 20):
            if time.monotonic() > deadline:
                return
            with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
                await asyncio.wait_for(connack(gw.port, devices[n % len(devices)], "wrong", source),
                                       max(0.1, deadline - time.monotonic()))
                answered[0] += 1

    async with peak_rss(gw) as rss:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(20)))
        took = time.monotonic() - t0
    return {"wrong_s": took, "wrong_answered": float(answered[0]), "wrong_rss_before_mb": rss["before"] / 2**20,
            "wrong_rss_peak_mb": rss["peak"] / 2**20}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    devices = [f"AP-{i:03d}" for i in range(1, args.devices + 1)]
    results: dict[str, Any] = {"devices": args.devices, "wrong_logins": args.wrong, "storm_seconds": args.storm_seconds}
    new_hashes = {d: hash_password(device_password(d)) for d in devices}
    old_hasher = PasswordHasher()  # argon2-cffi's default: what `hash-password` made before
    old_devices = devices[:20]
    old_hashes = {d: old_hasher.hash(device_password(d)) for d in old_devices}
    with tempfile.TemporaryDirectory(prefix="bench-logins-") as tmp:
        async def reconnect(gw: Gateway) -> dict[str, float]:
            return await reconnect_storm(gw, devices)

        async def wrong(gw: Gateway) -> dict[str, float]:
            return await wrong_password_storm(gw, devices, args.wrong, args.storm_seconds)

        for name, run in (("reconnect", reconnect), ("wrong", wrong)):
            folder = Path(tmp) / name
            folder.mkdir()
            async with gateway(folder, devices=devices, hashes=new_hashes) as gw:
                await asyncio.sleep(1.0)  # settled after start
                results.update(await run(gw))
        folder = Path(tmp) / "old"
        folder.mkdir()
        async with gateway(folder, devices=old_devices, hashes=old_hashes) as gw:
            await asyncio.sleep(1.0)
            old = await wrong_password_storm(gw, old_devices, args.wrong, args.storm_seconds)
        results.update({f"old_hashes_{key}": value for key, value in old.items()})
    return results


def report(results: dict[str, Any]) -> str:
    r = results
    return "\n".join([
        f"login benchmark: argon2id m=19 MiB t=2 p=1, {r['devices']} devices",
        f"  reconnect storm: {r['storm_accepted']:.0f} of {r['devices']} logged in within {r['storm_s']:.2f} s; "
        f"RSS {r['storm_rss_before_mb']:.1f} -> peak {r['storm_rss_peak_mb']:.1f} MB",
        f"  wrong-password storm (20 at a time): {r['wrong_answered']:.0f} of {r['wrong_logins']} answered in "
        f"{r['wrong_s']:.1f} s; RSS {r['wrong_rss_before_mb']:.1f} -> peak {r['wrong_rss_peak_mb']:.1f} MB",
        f"  the same against old hashes (m=64 MiB t=3 p=4): {r['old_hashes_wrong_answered']:.0f} answered in "
        f"{r['old_hashes_wrong_s']:.1f} s; RSS {r['old_hashes_wrong_rss_before_mb']:.1f} -> peak "
        f"{r['old_hashes_wrong_rss_peak_mb']:.1f} MB",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--wrong", type=int, default=200, help="wrong-password logins in the storm")
    parser.add_argument("--storm-seconds", type=float, default=60.0, help="the wrong-password storm stops then")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--smoke", action="store_true", help="20 devices, 40 wrong logins, at most 5 s")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.wrong, args.storm_seconds = 20, 40, 5.0
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
