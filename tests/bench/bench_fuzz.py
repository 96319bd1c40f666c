"""Fuzz run (issue 12, point 9): malformed payloads and raw packets against the gateway process.

    .venv/bin/python -m tests.bench.bench_fuzz             # 100,000 inputs: 80,000 payloads, 20,000 packets
    .venv/bin/python -m tests.bench.bench_fuzz --smoke     # seconds; what the test suite runs

The gateway runs as `edge-gateway run` (bench_flood.gateway, 10 devices). Seeded, so a run can be repeated.
  * payloads: logged-in devices publish mutated readings on their own data topic at QoS 1 (broken and
    deep JSON, wrong types, out-of-range and absurd values, NaN, huge numbers, bad UTF-8, random bytes,
    over 64 KiB, ...). Every one must be acknowledged and then be either a reading or a quarantine row:
    stored + quarantined = sent. Readings that pass carry a unique `seq`, so none is a resend.
  * packets: raw connections sending garbage, before a CONNECT and after a valid one (random bytes,
    mutated PUBLISH/SUBSCRIBE packets, bad remaining lengths, reserved types and flags).
Reported: crashes (the process gone, or a traceback in its log), the payload property, peak RSS, the log's
size. Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bench.bench_flood import Gateway, gateway, peak_rss
from tests.bench.common import run_and_report
from tests.bench.mqttload import Device, connect_packet, publish_packet, remaining_length, subscribe_packet
from tests.fixtures.gateway import device_password

HOST = "127.0.0.1"
DEVICES = [f"AP-{i:02d}" for i in range(1, 11)]


def _valid(rng: random.Random, seq: int) -> dict[str, Any]:
    return {"timestamp": 1763800000000 + seq, "pm25": rng.uniform(0, 500), "fanSpeed": rng.randint(0, 5),
            "powerOn": rng.random() < 0.5, "humidity": rng.uniform(0, 100), "seq": seq}


def _absurd(rng: random.Random) -> Any:
    return rng.choice([None, True, "", "x" * rng.randint(1, 300), -1, 10**30, -1e308, 1e308, 0.0, [], {},
                       [1, 2, {"a": None}], {"nested": {"deep": [1]}}, "\u0000\ufffd", 2**63, -(2**63) - 1])


def _mutate_object(rng: random.Random, seq: int) -> bytes:
    body = _valid(rng, seq)
    for _ in range(rng.randint(1, 3)):
        key = rng.choice([*body, "timestamp", "ts", "metrics", rng.choice(["x", "fw", "$", "ü" * 3, ""])])
        body[key] = _absurd(rng)
    return json.dumps(body).encode()


def _deep(rng: random.Random, seq: int) -> bytes:
    depth = rng.choice([33, 100, 1000, 5000])
    if rng.random() < 0.5:
        return ("[" * depth + "]" * depth).encode()
    return ('{"a":' * depth + "1" + "}" * depth).encode()


def _broken_json(rng: random.Random, seq: int) -> bytes:
    text = json.dumps(_valid(rng, seq)).encode()
    cut = rng.randint(0, len(text))
    return rng.choice([text[:cut], text[:cut] + text[cut + 1:], text.replace(b":", b"=", 1), text + b"}",
                       b"\xff" + text, text.replace(b"7", b"NaN", 1), text.replace(b"1", b"Infinity", 1), b"null",
                       b"[]", b'"str"'])


def _random_bytes(rng: random.Random, seq: int) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 7, 64, 1024, rng.randint(1, 4096)]))


def _big(rng: random.Random, seq: int) -> bytes:
    body = _valid(rng, seq)
    body["pad"] = "p" * rng.choice([60_000, 70_000, 100_000])
    return json.dumps(body).encode()


def _generic(rng: random.Random, seq: int) -> bytes:
    metrics = {rng.choice(["co2", "t", "", "$x", "ä"]): _absurd(rng) for _ in range(rng.randint(0, 4))}
    return json.dumps({"ts": rng.choice([1763800000 + seq, -5, 1e30, "2025-11-22T08:26:42Z", "no"]),
                       "metrics": metrics, "seq": seq}).encode()


def _valid_reading(rng: random.Random, seq: int) -> bytes:
    return json.dumps(_valid(rng, seq)).encode()


PAYLOADS: list[tuple[Callable[[random.Random, int], bytes], float]] = [
    (_mutate_object, 0.35), (_broken_json, 0.2), (_random_bytes, 0.15), (_generic, 0.12), (_valid_reading, 0.1),
    (_deep, 0.05), (_big, 0.03),
]


async def fuzz_payloads(gw: Gateway, count: int, rng: random.Random) -> dict[str, float]:
    devices = [Device(d, device_password(d), 1) for d in DEVICES]
    for dev in devices:
        await dev.connect(HOST, gw.port)
    makers, weights = zip(*PAYLOADS, strict=True)

    async def publish(dev: Device, share: range) -> None:
        topic = f"device/{dev.device_id}/data"
        for seq in share:
            maker = rng.choices(makers, weights)[0]
            await dev.publish(topic, maker(rng, seq))

    per = count // len(devices)
    await asyncio.gather(*(publish(d, range(i * per, (i + 1) * per)) for i, d in enumerate(devices)))
    await asyncio.gather(*(d.settle(60) for d in devices))
    for dev in devices:
        await dev.close()
    return {"payloads_sent": float(sum(d.sent for d in devices)),
            "payloads_acked": float(sum(d.acked for d in devices))}


def _garbage_packet(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randbytes(rng.randint(1, 200))
    if kind == 1:  # a PUBLISH with a mutated byte
        packet = bytearray(publish_packet(rng.choice(["device/AP-01/data", "a/#", "$SYS/x", ""]),
                                          rng.randbytes(rng.randint(0, 50)), rng.randint(0, 2), rng.randint(0, 65535)))
        packet[rng.randrange(len(packet))] = rng.randrange(256)
        return bytes(packet)
    if kind == 2:  # a SUBSCRIBE with a mutated byte
        packet = bytearray(subscribe_packet(rng.choice(["device/AP-01/command", "#", "+/+", ""]), rng.randint(0, 3)))
        packet[rng.randrange(len(packet))] = rng.randrange(256)
        return bytes(packet)
    if kind == 3:  # a remaining length that does not fit, or runs past the packet
        length = rng.choice([b"\xff\xff\xff\xff\xff", remaining_length(rng.randint(0, 2**28 - 1))])
        return bytes([rng.randrange(256)]) + length
    if kind == 4:  # reserved packet types and flags
        return bytes([rng.choice([0x00, 0xF0, 0x31 | 0x06, 0x82 & 0xF0, 0x62 & 0xF0]), 0])
    return b"\x10" + rng.randbytes(rng.randint(1, 40))  # a CONNECT of garbage


async def fuzz_packets(gw: Gateway, count: int, rng: random.Random) -> dict[str, float]:
    done = [0]

    async def one(after_login: bool) -> None:
        with contextlib.suppress(OSError, TimeoutError, asyncio.IncompleteReadError):
            # Garbage before a login comes from many addresses: a CONNECT that parses as a failed login slows
            # its source down (login back-off), and the devices' own logins come from 127.0.0.1.
            source = HOST if after_login else f"127.0.4.{rng.randint(1, 250)}"
            reader, writer = await asyncio.open_connection(HOST, gw.port, local_addr=(source, 0))
            try:
                if after_login:
                    device = rng.choice(DEVICES)
                    writer.write(connect_packet(device, device, device_password(device)))
                    await asyncio.wait_for(reader.readexactly(4), 10)
                writer.write(_garbage_packet(rng))
                await asyncio.wait_for(writer.drain(), 5)
                with contextlib.suppress(TimeoutError):  # read what comes back until closed (or a moment passes)
                    await asyncio.wait_for(reader.read(65536), 0.2)
            finally:
                writer.close()
        done[0] += 1

    for start in range(0, count, 50):
        await asyncio.gather(*(one(rng.random() < 0.7) for _ in range(min(50, count - start))))
    return {"packets_sent": float(done[0])}


def _counts(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        readings = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        quarantined = conn.execute("SELECT count(*) FROM quarantine WHERE topic LIKE 'device/%/data'").fetchone()[0]
    return int(readings), int(quarantined)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    results: dict[str, Any] = {"seed": args.seed, "payloads": args.payloads, "packets": args.packets}
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as tmp:
        folder = Path(tmp)
        async with gateway(folder, devices=DEVICES) as gw:
            async with peak_rss(gw) as rss:
                t0 = time.monotonic()
                results.update(await fuzz_payloads(gw, args.payloads, rng))
                # Counted now: every payload was acknowledged, so committed (garbage packets may add rows later).
                readings, quarantined = _counts(folder / "data" / "gateway.db")
                results.update(await fuzz_packets(gw, args.packets, rng))
                results["seconds"] = time.monotonic() - t0
            await asyncio.sleep(0.5)  # the last commits
            results["alive"] = gw.proc.returncode is None
            log = gw.log.read_text(errors="replace")
            if args.log_to is not None:
                args.log_to.write_text(log)
        results.update({
            "stored": float(readings), "quarantined": float(quarantined),
            "stored_plus_quarantined_minus_sent": float(readings + quarantined) - results["payloads_sent"],
            "crashes": float((not results["alive"]) + log.count("Traceback")),
            "rss_before_mb": rss["before"] / 2**20, "rss_peak_mb": rss["peak"] / 2**20,
            "log_kb": len(log.encode()) / 1024,
        })
    return results


def report(results: dict[str, Any]) -> str:
    r = results
    return "\n".join([
        f"fuzz run (seed {r['seed']}): {r['payloads_sent']:.0f} payloads and {r['packets_sent']:.0f} raw packets "
        f"in {r['seconds']:.0f} s; crashes {r['crashes']:.0f}",
        f"  payloads: {r['payloads_acked']:.0f} acknowledged, {r['stored']:.0f} stored + {r['quarantined']:.0f} "
        f"quarantined = {r['stored'] + r['quarantined']:.0f} (sent - stored - quarantined = "
        f"{-r['stored_plus_quarantined_minus_sent']:.0f})",
        f"  RSS {r['rss_before_mb']:.1f} -> peak {r['rss_peak_mb']:.1f} MB; log {r['log_kb']:.1f} KB",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", type=int, default=80_000)
    parser.add_argument("--packets", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--log-to", type=Path, help="keep the gateway's log here")
    parser.add_argument("--smoke", action="store_true", help="2,000 payloads, 500 packets")
    args = parser.parse_args(argv)
    if args.smoke:
        args.payloads, args.packets = 2_000, 500
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
