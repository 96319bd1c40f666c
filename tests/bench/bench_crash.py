"""Crash benchmark, black-box: does every acknowledged reading reach the cloud once, under one msgId, through
kill -9s of the gateway, a cloud outage and a graceful stop? (issue 12, points 7 and 8)

    .venv/bin/python -m tests.bench.bench_crash             # 50 devices, 500 readings/s, 210 s (~4 min)
    .venv/bin/python -m tests.bench.bench_crash --smoke     # 14 s of load, 3 kill -9s, a 3 s outage (~30 s)
    .venv/bin/python -m tests.bench.bench_crash --keep DIR  # keep the daemon's log, config and database

A real Mosquitto is the cloud broker (own config, free loopback port, persistence on) and the gateway runs
as `python -m gateway run` on the product config (devices with passwords, the ACL on, the default commit
interval, the uplink to that Mosquitto). A subscriber on the cloud broker (persistent session, QoS 1,
subscribed before the load) keeps every telemetry message it receives.

The devices publish at a fixed total rate, QoS 1, each reading identifiable by its device and its `seq` (a
numeric field of the flat form: a metric, so the cloud's copy carries it) and a timestamp unique per device.
Each device keeps at most 20 readings in flight, like paho's default, and behaves as a real device does
when its connection drops: it reconnects to its persistent session (clean session off) and publishes again,
with DUP and the same packet id, every reading whose PUBACK it has not seen; readings taken meanwhile wait.

During the load: `--kills` kill -9s of the gateway (each restarted at once, as systemd does), one cloud outage
(Mosquitto stopped for `--outage` seconds, then started again) and one SIGTERM with a restart. Then the load
stops, the devices get their last PUBACKs, the outbox drains and the figures are counted:

  * lost: readings PUBACKed to their device that never reached the cloud (must be 0);
  * two_msgids: readings that reached the cloud under two or more msgIds: the cloud cannot drop the second
    copy (must be 0);
  * same_msgid_duplicates: copies of a reading under a msgId the cloud had seen (at-least-once: allowed);
  * stored_twice: readings stored twice in the gateway's database (the local view of two_msgids);
  * resends: readings the devices published again after a connection dropped; the most after one kill -9 or
    SIGTERM, all devices together and by one device (at most its in-flight window);
  * recognised_resends: of those, the ones the gateway had stored already and acknowledged without storing
    them again (its gateway_ingest_resends_total, read from /metrics before each kill and at the end): each
    would be a reading under two msgIds if ingest did not recognise it;
  * restart_s: from the kill -9 (or SIGTERM) to the restarted gateway accepting connections, median and max.

Prints the figures and writes them as JSON (--json). Exits non-zero only on its own errors (a gateway that
does not start again is one); the counts are figures, checked by tests/bench/test_benchmarks.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.bench_ingest import HOST, wait_port
from tests.bench.common import run_and_report
from tests.bench.mqttload import connect_packet, publish_packet, read_packet, subscribe_packet
from tests.fixtures.cloud import uplink_config
from tests.fixtures.gateway import device_password, free_port, write_config
from tests.fixtures.mosquitto import MosquittoBroker

WINDOW = 20  # readings in flight per device
Key = tuple[str, int]  # (device, seq): one reading
Event = tuple[float, str, Callable[[], Awaitable[None]]]  # (seconds into the load, name, action)


@dataclass
class Tally:
    """What the devices were told and what the cloud received."""

    acked: set[Key] = field(default_factory=set)
    cloud: dict[Key, set[str]] = field(default_factory=dict)  # reading -> the msgIds it arrived under
    deliveries: int = 0  # telemetry readings received by the cloud, copies included
    resends: int = 0  # readings published again by a device after its connection dropped


class CrashDevice:
    """A QoS 1 device that resends what was not acknowledged when it reconnects (see the module doc)."""

    def __init__(self, device_id: str, tally: Tally) -> None:
        self.device_id = device_id
        self.topic = f"device/{device_id}/data"
        self.tally = tally
        self.pending: deque[tuple[int, bytes]] = deque()  # (seq, payload) taken, not yet sent
        self.inflight: dict[int, tuple[int, bytes]] = {}  # packet id -> (seq, PUBLISH packet), oldest first
        self.wake = asyncio.Event()
        self.seq = 0
        self.last_ms = 0
        self.connects = 0
        self.resends = 0
        self._next_pid = 1

    def take_reading(self) -> None:
        """A new reading: its own seq and a timestamp no earlier reading of this device has."""
        self.seq += 1
        self.last_ms = max(int(time.time() * 1000), self.last_ms + 1)
        payload = json.dumps({"timestamp": self.last_ms, "pm25": round(random.uniform(2, 80), 1), "pm10": 11.2,
                              "temperature": 22.4, "humidity": 41.0, "fanSpeed": 2, "powerOn": True,
                              "seq": self.seq}, separators=(",", ":")).encode()
        self.pending.append((self.seq, payload))
        self.wake.set()

    @property
    def idle(self) -> bool:
        return not self.pending and not self.inflight

    async def run(self, port: int) -> None:
        """Connected whenever the gateway accepts; forever (cancelled at the end)."""
        while True:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                await self._session(port)
            await asyncio.sleep(random.uniform(0.1, 0.3))

    async def _session(self, port: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(connect_packet(self.device_id, self.device_id, device_password(self.device_id),
                                        clean=False))
            kind, body = await asyncio.wait_for(read_packet(reader), 10)
            if kind != 0x20 or body[1] != 0:
                raise ConnectionError(f"{self.device_id}: CONNACK {body!r}")
            self.connects += 1
            for _seq, packet in self.inflight.values():  # not acknowledged: sent again, DUP set
                writer.write(bytes([packet[0] | 0x08]) + packet[1:])
            self.tally.resends += len(self.inflight)
            self.resends += len(self.inflight)
            sender = asyncio.create_task(self._send(writer))
            try:
                await self._read_acks(reader)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        finally:
            writer.close()

    async def _read_acks(self, reader: asyncio.StreamReader) -> None:
        while True:
            kind, body = await read_packet(reader)
            if kind == 0x40:
                taken = self.inflight.pop(int.from_bytes(body[:2], "big"), None)
                if taken is not None:
                    self.tally.acked.add((self.device_id, taken[0]))
                    self.wake.set()

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        while True:
            await writer.drain()
            self.wake.clear()
            while self.pending and len(self.inflight) < WINDOW:
                seq, payload = self.pending.popleft()
                pid = self._packet_id()
                packet = publish_packet(self.topic, payload, 1, pid)
                self.inflight[pid] = (seq, packet)
                writer.write(packet)
            await self.wake.wait()

    def _packet_id(self) -> int:
        while True:
            pid = self._next_pid
            self._next_pid = pid % 65535 + 1
            if pid not in self.inflight:
                return pid


class CloudSubscriber:
    """All telemetry on the cloud broker, by reading: a persistent session with a QoS 1 subscription, so the
    broker keeps what arrives while this subscriber reconnects (the outage, its restart)."""

    def __init__(self, port: int, tally: Tally) -> None:
        self.port = port
        self.tally = tally
        self.subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
                try:
                    writer.write(connect_packet("bench-crash-cloud", None, None, keepalive=0, clean=False))
                    await read_packet(reader)
                    writer.write(subscribe_packet("v1/telemetry/#", 1))
                    while True:
                        kind, body = await read_packet(reader)
                        if kind == 0x90:
                            self.subscribed.set()
                        elif kind & 0xF0 == 0x30:
                            start = 2 + int.from_bytes(body[:2], "big")
                            topic = body[2:start].decode()
                            if kind & 0x06:  # QoS 1: acknowledged, or the broker sends it again
                                writer.write(b"\x40\x02" + body[start:start + 2])
                                start += 2
                            self._count(topic, json.loads(body[start:]))
                finally:
                    writer.close()
            except (OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.1)

    def _count(self, topic: str, payload: dict[str, Any]) -> None:
        device = topic.rsplit("/", 1)[1]
        for reading in payload.get("readings") or [payload]:  # the batch form, or one reading
            key = (reading.get("deviceId", device), int(reading["metrics"]["seq"]))
            self.tally.cloud.setdefault(key, set()).add(reading["msgId"])
            self.tally.deliveries += 1


class GatewayProcess:
    """`python -m gateway run` on a fixed port, killed and restarted as the schedule says."""

    def __init__(self, config: Path, port: int, api_port: int) -> None:
        self.config = config
        self.port = port
        self.api_port = api_port
        self.log = config.parent / "daemon.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.recognised_by_process: list[int] = []  # each process's count, read just before it was stopped

    async def read_resends(self) -> None:
        """Add what the running process recognised since it started (its counter starts at 0 with it)."""
        url = f"http://{HOST}:{self.api_port}/metrics"
        try:
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        except OSError as exc:
            raise RuntimeError(f"GET /metrics: {exc}") from None
        for line in text.splitlines():
            if line.startswith("gateway_ingest_resends_total "):
                self.recognised_by_process.append(int(float(line.split()[1])))
                return
        self.recognised_by_process.append(0)

    async def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway", "run", "--config", str(self.config),
                stdout=asyncio.subprocess.DEVNULL, stderr=log)
        try:
            await wait_port(self.port, self.proc, timeout=60)
            await wait_port(self.api_port, self.proc, timeout=60)  # /metrics is read before the next kill
        except RuntimeError as exc:
            raise RuntimeError(f"the gateway did not start again: {exc}\n{self.log.read_text()[-3000:]}") from None
        self.starts += 1

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    async def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
                raise RuntimeError("the gateway ignored SIGTERM for 30 s") from None
        return self.proc.returncode or 0


@dataclass
class Plan:
    devices: int
    rate: float
    seconds: float
    kills: int
    outage: float


def schedule(plan: Plan, gw: GatewayProcess, cloud: MosquittoBroker) -> list[Event]:
    """The events of the run: kill -9s spread over the run, the outage in its middle (kills
    land in it too), the SIGTERM near its end."""

    async def kill_and_restart() -> None:
        await gw.read_resends()
        await gw.kill()
        await gw.start()

    async def stop_and_restart() -> None:
        await gw.read_resends()
        if await gw.terminate() != 0:
            raise RuntimeError(f"the gateway's SIGTERM exit status was not 0:\n{gw.log.read_text()[-3000:]}")
        await gw.start()

    async def cloud_down() -> None:
        await asyncio.to_thread(cloud.stop)

    async def cloud_up() -> None:
        await asyncio.to_thread(cloud.start)

    span = plan.seconds * 0.85
    events: list[Event] = [
        (span * (i + 0.5) / plan.kills, "kill -9", kill_and_restart) for i in range(plan.kills)]
    outage_at = plan.seconds * 0.45 - plan.outage / 2
    events += [(outage_at, "cloud down", cloud_down), (outage_at + plan.outage, "cloud up", cloud_up),
               (plan.seconds * 0.9, "SIGTERM", stop_and_restart)]
    return sorted(events, key=lambda event: event[0])


async def generate(devices: list[CrashDevice], rate: float, seconds: float) -> int:
    """Readings at `rate` per second in total, round robin over the devices; returns how many."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    taken = 0
    while (elapsed := loop.time() - start) < seconds:
        for _ in range(int(elapsed * rate) - taken):
            devices[taken % len(devices)].take_reading()
            taken += 1
        await asyncio.sleep(0.01)
    return taken


async def wait_until(predicate: Callable[[], bool], limit: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def outbox_rows(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE kind = 'telemetry'").fetchone()[0])


def stored_twice(db: Path) -> int:
    """Readings (device, seq) stored more than once in the gateway's database."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute("SELECT device_id, json_extract(metrics, '$.seq') FROM readings").fetchall()
    return len(rows) - len(set(rows))


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan(args.devices, args.rate, args.seconds, args.kills, args.outage)
    ids = [f"AP-{i:03d}" for i in range(1, plan.devices + 1)]
    tally = Tally()
    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-crash-")))
        work.mkdir(parents=True, exist_ok=True)
        cloud = MosquittoBroker(work / "cloud", persistence=True)  # the subscriber's session survives the outage
        stack.callback(cloud.stop)
        await asyncio.to_thread(cloud.start)
        subscriber = CloudSubscriber(cloud.port, tally)
        await subscriber.start()
        port = free_port()
        api_port = free_port()
        config = write_config(work, devices=ids, port=port, storage="commit_interval_ms = 5.0",
                              api=f'host = "{HOST}"\nport = {api_port}', extra=uplink_config(cloud.port))
        gw = GatewayProcess(config, port, api_port)
        await gw.start()
        devices = [CrashDevice(d, tally) for d in ids]
        tasks = [asyncio.create_task(d.run(port)) for d in devices]
        try:
            results = await _run(plan, gw, cloud, devices, tally)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await subscriber.stop()
            if gw.proc is not None and gw.proc.returncode is None:
                await gw.terminate()
        results["stored_twice"] = float(stored_twice(work / "data" / "gateway.db"))
    return results


async def _run(plan: Plan, gw: GatewayProcess, cloud: MosquittoBroker, devices: list[CrashDevice],
               tally: Tally) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    events = schedule(plan, gw, cloud)
    load = asyncio.create_task(generate(devices, plan.rate, plan.seconds))
    start = loop.time()
    resends_after: list[int] = []  # all devices together, after each kill -9 or SIGTERM
    most_by_one: list[int] = []  # the most one device resent after each
    restarts: list[float] = []
    for at, name, action in events:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        before = tally.resends
        before_each = [d.resends for d in devices]
        t0 = loop.time()
        await action()
        print(f"  {loop.time() - start:6.1f} s  {name} ({loop.time() - t0:.1f} s)", flush=True)
        if name in ("kill -9", "SIGTERM"):
            restarts.append(loop.time() - t0)
            await asyncio.sleep(2.0)  # the devices are back and have resent
            resends_after.append(tally.resends - before)
            most_by_one.append(max(d.resends - b for d, b in zip(devices, before_each, strict=True)))
    taken = await load
    t0 = loop.time()
    settled = await wait_until(lambda: all(d.idle for d in devices), 120)
    db = gw.config.parent / "data" / "gateway.db"
    drained = await wait_until(lambda: all(key in tally.cloud for key in tally.acked) and outbox_rows(db) == 0, 180)
    drain_s = loop.time() - t0
    await asyncio.sleep(2.0)  # copies still on their way are counted too
    await gw.read_resends()
    two = sorted(key for key, ids in tally.cloud.items() if len(ids) > 1)
    return {
        "devices": plan.devices, "rate": plan.rate, "seconds": plan.seconds, "kills": float(plan.kills),
        "sigterms": 1.0, "outage_s": plan.outage, "gateway_starts": float(gw.starts),
        "readings_taken": float(taken), "readings_acked": float(len(tally.acked)),
        "unacked_at_end": float(taken - len(tally.acked)), "settled": settled, "drained": drained,
        "drain_s": drain_s,
        "lost": float(sum(key not in tally.cloud for key in tally.acked)),
        "two_msgids": float(len(two)), "two_msgids_examples": [list(key) for key in two[:10]],
        "same_msgid_duplicates": float(tally.deliveries - sum(len(ids) for ids in tally.cloud.values())),
        "cloud_readings": float(len(tally.cloud)),
        "cloud_not_acked": float(sum(key not in tally.acked for key in tally.cloud)),
        "resends": float(tally.resends), "max_resends_after_one_event": float(max(resends_after, default=0)),
        "max_resends_by_one_device": float(max(most_by_one, default=0)),
        "recognised_resends": float(sum(gw.recognised_by_process)), "recognised_by_process": gw.recognised_by_process,
        "restart_s_median": statistics.median(restarts), "restart_s_max": max(restarts),
    }


def report(r: dict[str, Any]) -> str:
    return "\n".join([
        f"crash benchmark: {r['devices']} devices, {r['rate']:g} readings/s for {r['seconds']:g} s; "
        f"{r['kills']:.0f} kill -9s, {r['sigterms']:.0f} SIGTERM, a {r['outage_s']:g} s cloud outage "
        f"({r['gateway_starts']:.0f} gateway starts)",
        f"  LOST (acknowledged, never at the cloud): {r['lost']:.0f}",
        f"  UNDER TWO msgIds at the cloud: {r['two_msgids']:.0f}"
        + (f" (device, seq: {r['two_msgids_examples']})" if r["two_msgids_examples"] else ""),
        f"  stored twice in the gateway's database: {r['stored_twice']:.0f}",
        f"  same-msgId duplicates (allowed): {r['same_msgid_duplicates']:.0f}",
        f"  readings taken {r['readings_taken']:.0f}, acknowledged {r['readings_acked']:.0f} "
        f"(unacknowledged at the end {r['unacked_at_end']:.0f}), at the cloud {r['cloud_readings']:.0f} "
        f"(not acknowledged {r['cloud_not_acked']:.0f}); drain {r['drain_s']:.1f} s",
        f"  device resends: {r['resends']:.0f} in all; after one kill -9 or SIGTERM at most "
        f"{r['max_resends_after_one_event']:.0f} (all devices), {r['max_resends_by_one_device']:.0f} (one device)",
        f"  resends the gateway recognised as readings it had stored (else under two msgIds): "
        f"{r['recognised_resends']:.0f}",
        f"  restart (kill -> accepting): median {r['restart_s_median']:.1f} s, max {r['restart_s_max']:.1f} s",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--rate", type=float, default=500.0, help="readings/s, all devices together")
    parser.add_argument("--seconds", type=float, default=210.0, help="of load")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the cloud broker is down")
    parser.add_argument("--keep", type=Path, help="work here and keep it (log, config, database)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.devices, args.rate, args.seconds, args.kills, args.outage = 50, 500.0, 14.0, 3, 3.0
    return run_and_report(args, bench, report)


if __name__ == "__main__":
    main()
