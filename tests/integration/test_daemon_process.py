"""The daemon as systemd runs it: a separate process, sd_notify, SIGTERM during a burst, SIGHUP."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from gateway.broker.mosquitto.config_files import CONFIG_NAME
from tests.fixtures.backends import MOSQUITTO
from tests.fixtures.gateway import cheap_hash, device_password, free_port, write_config

# Readings carry the time of this run: the daemon's data lifecycle, which runs at each start, compacts readings
# older than 2 h out of the readings table these tests read and expires those older than 90 days, by their own
# time: readings dated in the past would leave that table at a test's second start and look lost.
_T0_MS = int(time.time() * 1000)


@dataclass
class DaemonProcess:
    proc: asyncio.subprocess.Process
    notify: socket.socket
    port: int
    config: Path
    db: Path
    messages: list[str]
    log: Path  # the daemon's stderr: a file, not a pipe, so a chatty daemon never blocks on a full pipe

    async def wait_notify(self, line: str, timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(line in m.split("\n") for m in self.messages):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {line} from the daemon; got {self.messages}")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.notify, 4096), remaining)
            except TimeoutError:
                continue
            self.messages.append(data.decode())


@contextlib.asynccontextmanager
async def _start_daemon(tmp_path: Path, storage: str = "", backend: str = "embedded") -> AsyncIterator[DaemonProcess]:
    port = free_port()
    config = write_config(tmp_path, devices=["AP-01", "AP-02", "AP-03", "AP-04"], port=port, storage=storage,
                          backend=backend)
    notify_path = tmp_path / "notify.sock"
    notify_path.unlink(missing_ok=True)  # a daemon started before in this folder
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.setblocking(False)
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "daemon.stderr"
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(config),
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )
    d = DaemonProcess(proc, notify, port, config, tmp_path / "data" / "gateway.db", [], log)
    try:
        await d.wait_notify("READY=1")
        yield d
    finally:
        if proc.returncode is None:
            proc.terminate()  # a clean stop (on Mosquitto, it stops its child too), else SIGKILL
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        notify.close()


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    async with _start_daemon(tmp_path) as d:
        yield d


async def test_notifies_systemd_ready_and_watchdog(daemon: DaemonProcess) -> None:
    await daemon.wait_notify("WATCHDOG=1")
    daemon.proc.send_signal(signal.SIGTERM)
    await daemon.wait_notify("STOPPING=1")
    assert await asyncio.wait_for(daemon.proc.wait(), 5) == 0


async def _publisher(port: int, device_id: str, acked: list[int], going: asyncio.Event) -> None:
    """Publish QoS 1 readings flat out; a sequence number counts as acked once publish() returned."""
    seq = 0
    try:
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=device_id, username=device_id, password=device_password(device_id),
            max_inflight_messages=20,
        ) as client:
            while True:
                seq += 1
                body = {"timestamp": _T0_MS + seq, "pm25": 1.0, "seq": seq}
                await client.publish(f"device/{device_id}/data", json.dumps(body), qos=1, timeout=5)
                acked.append(seq)
                if seq == 500:
                    going.set()
    except aiomqtt.MqttError:
        return  # the gateway went away mid-burst: expected


def _stored_seqs(db: Path, devices: list[str]) -> dict[str, set[int]]:
    with sqlite3.connect(db) as conn:
        stored: dict[str, set[int]] = {d: set() for d in devices}
        for device_id, metrics in conn.execute("SELECT device_id, metrics FROM readings"):
            stored[device_id].add(json.loads(metrics)["seq"])
    return stored


async def test_sigterm_during_a_burst_loses_no_accepted_reading(daemon: DaemonProcess) -> None:
    devices = ["AP-01", "AP-02", "AP-03", "AP-04"]
    acked: dict[str, list[int]] = {d: [] for d in devices}
    going = asyncio.Event()  # set when one publisher has 500 acknowledged readings
    publishers = [asyncio.create_task(_publisher(daemon.port, d, acked[d], going)) for d in devices]
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(going.wait(), 20)
    signalled_at = loop.time()
    daemon.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(daemon.proc.wait(), 10)
    took = loop.time() - signalled_at
    await asyncio.wait_for(asyncio.gather(*publishers), 10)
    assert code == 0
    assert took < 5.0, f"shutdown took {took:.2f} s"

    stored = _stored_seqs(daemon.db, devices)
    for device_id in devices:
        missing = set(acked[device_id]) - stored[device_id]
        assert not missing, f"{device_id}: {len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:5]}"
    total_stored = sum(len(s) for s in stored.values())
    print(f"acked {sum(len(v) for v in acked.values())}, stored {total_stored}, shutdown {took:.2f} s")


async def _raw_publisher(port: int, device_id: str, acked: list[int], going: asyncio.Event,
                         until: int | None = None) -> None:
    """QoS 1 flat out with 50 in flight (until `until` readings are acked, if given); a sequence number counts
    as acked when its PUBACK came (in order)."""
    from tests.bench.mqttload import connect_packet, publish_packet

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet(device_id, device_id, device_password(device_id)))
    assert (await reader.readexactly(4))[3] == 0
    in_flight: collections.deque[tuple[int, int]] = collections.deque()  # (packet id, seq)
    seq = 0
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while True:
            while len(in_flight) < 50:
                seq += 1
                body = json.dumps({"timestamp": _T0_MS + seq, "pm25": 1.0, "seq": seq}).encode()
                packet_id = seq % 65535 + 1
                writer.write(publish_packet(f"device/{device_id}/data", body, 1, packet_id=packet_id))
                in_flight.append((packet_id, seq))
            header = await reader.readexactly(4)
            expected_id, acked_seq = in_flight.popleft()
            assert header == b"\x40\x02" + expected_id.to_bytes(2, "big"), "PUBACKs out of order"
            acked.append(acked_seq)
            if len(acked) >= 1000:
                going.set()
            if until is not None and len(acked) >= until:
                break
    writer.close()


async def test_kill_9_during_a_burst_loses_no_acknowledged_reading(tmp_path: Path) -> None:
    """A crash (OOM, watchdog, power) must not lose what a device was told is safe.

    amqtt sent the PUBACK once it had queued a message in memory: with commits 200 ms apart, a kill -9
    lost the readings acknowledged since the last commit. Now the PUBACK waits for the commit.
    """
    devices = ["AP-01", "AP-02", "AP-03", "AP-04"]
    async with _start_daemon(tmp_path, storage="commit_interval_ms = 200") as daemon:
        acked: dict[str, list[int]] = {d: [] for d in devices}
        going = asyncio.Event()
        publishers = [asyncio.create_task(_raw_publisher(daemon.port, d, acked[d], going)) for d in devices]
        await asyncio.wait_for(going.wait(), 30)
        await asyncio.sleep(0.1)  # in the middle of a commit interval
        daemon.proc.kill()
        await daemon.proc.wait()
        await asyncio.wait_for(asyncio.gather(*publishers), 15)
    stored = _stored_seqs(daemon.db, devices)
    for device_id in devices:
        missing = set(acked[device_id]) - stored[device_id]
        assert not missing, f"{device_id}: {len(missing)} acknowledged readings lost, e.g. {sorted(missing)[:5]}"


def _mosquittos_on(config: Path) -> list[int]:
    """The pids of the Mosquitto processes running on `config` (the daemon's child, or one it left behind)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue  # ended meanwhile
        if argv and argv[0].endswith(b"mosquitto") and str(config).encode() in argv:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def mosquitto_reaper(tmp_path: Path) -> Iterator[None]:
    """Whatever happened in the test, no Mosquitto of its daemons outlives it (a daemon killed with -9 leaves its
    child running, in a session of its own, until the next start stops it)."""
    yield
    for pid in _mosquittos_on(tmp_path / "data" / "mosquitto" / CONFIG_NAME):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not MOSQUITTO.exists(), reason="no /usr/sbin/mosquitto")
@pytest.mark.timeout(120)  # two daemon starts and a drain, on a loaded machine
@pytest.mark.usefixtures("mosquitto_reaper")
async def test_kill_9_on_the_mosquitto_backend_loses_no_acknowledged_reading(tmp_path: Path) -> None:
    """On Mosquitto a device's PUBACK comes from Mosquitto. After a kill -9 of the daemon, what Mosquitto
    acknowledged and the gateway had not yet committed (or acknowledged to Mosquitto) waits in the gateway's
    session; Mosquitto, left running, is stopped by the next start (SIGTERM: it saves its sessions), and the
    next daemon stores all of it."""
    devices = ["AP-01", "AP-02", "AP-03", "AP-04"]
    acked: dict[str, list[int]] = {d: [] for d in devices}
    async with _start_daemon(tmp_path, storage="commit_interval_ms = 200", backend="mosquitto") as daemon:
        going = asyncio.Event()
        publishers = [asyncio.create_task(_raw_publisher(daemon.port, d, acked[d], going, until=1500))
                      for d in devices]
        await asyncio.wait_for(going.wait(), 30)
        await asyncio.sleep(0.1)  # in the middle of a commit interval
        daemon.proc.kill()
        await daemon.proc.wait()
    # The devices publish on to the Mosquitto left behind until the next start stops it; the next daemon
    # commits often (its backlog is the whole burst).
    async with _start_daemon(tmp_path, backend="mosquitto") as daemon:
        await asyncio.wait_for(asyncio.gather(*publishers), 15)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            stored = _stored_seqs(daemon.db, devices)
            missing = {d: set(acked[d]) - stored[d] for d in devices}
            if not any(missing.values()) or loop.time() > deadline:
                break
            await asyncio.sleep(0.2)
    for device_id in devices:
        lost = missing[device_id]
        assert not lost, f"{device_id}: {len(lost)} acknowledged readings lost, e.g. {sorted(lost)[:5]}"


async def test_sighup_reloads_devices_and_keeps_running(daemon: DaemonProcess) -> None:
    text = daemon.config.read_text()
    daemon.config.write_text(
        text + f'[[devices]]\nid = "NEW-1"\npassword_hash = "{cheap_hash(device_password("NEW-1"))}"\n'
    )
    daemon.proc.send_signal(signal.SIGHUP)
    await daemon.wait_notify("RELOADING=1")
    async with aiomqtt.Client("127.0.0.1", daemon.port, identifier="NEW-1", username="NEW-1",
                              password=device_password("NEW-1")) as client:
        await client.publish("device/NEW-1/data", b'{"pm25": 4}', qos=1)
    daemon.config.write_text("this is not toml [")
    daemon.proc.send_signal(signal.SIGHUP)
    await daemon.wait_notify("STATUS=running (config reload rejected)")
    assert daemon.proc.returncode is None  # an invalid file is refused, the daemon runs on
    daemon.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.proc.wait(), 5) == 0
    stderr = daemon.log.read_text()
    assert "config.reload_rejected" in stderr and "TOML syntax" in stderr
    with sqlite3.connect(daemon.db) as conn:
        assert conn.execute("SELECT count(*) FROM readings WHERE device_id='NEW-1'").fetchone() == (1,)
