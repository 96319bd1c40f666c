"""The simulated purifier against a real Mosquitto: readings, status/Will, commands, outages, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from firmware_sim.purifier import SimulatedPurifier

from drivers.purifier import PURIFIER_FIELDS
from tests.fixtures.mosquitto import MosquittoBroker, MosquittoFactory, TLSFiles

# The simulator must speak exactly what the gateway's purifier decoder validates.
CONTRACT_KEYS = set(PURIFIER_FIELDS) | {"timestamp"}
WAIT = 5.0  # bound on any single wait for a message or a state


class Watcher:
    """A test client's subscription: one queue of messages per topic."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self._queues: defaultdict[str, asyncio.Queue[aiomqtt.Message]] = defaultdict(asyncio.Queue)

    async def pump(self) -> None:
        async for message in self.client.messages:
            self._queues[str(message.topic)].put_nowait(message)

    async def next(self, topic: str, timeout: float = WAIT) -> aiomqtt.Message:
        async with asyncio.timeout(timeout):
            return await self._queues[topic].get()

    async def next_json(self, topic: str, timeout: float = WAIT) -> Any:
        payload = (await self.next(topic, timeout)).payload
        assert isinstance(payload, bytes)
        return json.loads(payload)

    async def next_text(self, topic: str, timeout: float = WAIT) -> str:
        payload = (await self.next(topic, timeout)).payload
        assert isinstance(payload, bytes)
        return payload.decode()

    async def publish(self, topic: str, payload: Any, qos: int = 1) -> None:
        await self.client.publish(topic, json.dumps(payload), qos=qos)


@contextlib.asynccontextmanager
async def watch(broker: MosquittoBroker, *filters: str) -> AsyncIterator[Watcher]:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"test-{uuid.uuid4().hex[:8]}") as client:
        for topic_filter in filters:
            await client.subscribe(topic_filter, qos=1)
        watcher = Watcher(client)
        pump = asyncio.create_task(watcher.pump(), name="test-watcher")
        try:
            yield watcher
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


async def wait_until(sim: SimulatedPurifier, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait (bounded) until a condition on the simulator's state holds."""
    async with asyncio.timeout(timeout):
        await sim.wait_for(predicate)


SimFactory = Callable[..., Awaitable[SimulatedPurifier]]


@pytest.fixture
async def start_sim(mosquitto: MosquittoBroker) -> AsyncIterator[SimFactory]:
    """Start SimulatedPurifiers as tasks (fast back-off for tests); cancel them all afterwards."""
    tasks: list[asyncio.Task[None]] = []

    async def factory(**kwargs: Any) -> SimulatedPurifier:
        options: dict[str, Any] = {
            "device_id": "AP-01",
            "password": None,
            "host": mosquitto.host,
            "port": mosquitto.port,
            "interval": 0.2,
            "seed": 1,
            "backoff_initial": 0.05,
            "backoff_max": 0.3,
        }
        options.update(kwargs)
        sim = SimulatedPurifier(**options)
        tasks.append(asyncio.create_task(sim.run(), name=f"sim-{sim.device_id}"))
        return sim

    try:
        yield factory
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


async def test_readings_arrive_in_contract_form_at_the_interval(
    mosquitto: MosquittoBroker, start_sim: SimFactory
) -> None:
    async with watch(mosquitto, "device/AP-01/data") as w:
        sim = await start_sim(interval=0.2)
        readings = [await w.next_json("device/AP-01/data") for _ in range(6)]
    for reading in readings:
        assert set(reading) == CONTRACT_KEYS
        assert isinstance(reading["timestamp"], int) and reading["timestamp"] > 10**12  # ms
        assert 0 <= reading["pm1"] <= reading["pm25"] <= reading["pm10"]
        assert reading["fanSpeed"] == 2 and reading["powerOn"] is True
    gaps = [b["timestamp"] - a["timestamp"] for a, b in itertools.pairwise(readings)]
    assert all(100 <= gap <= 1000 for gap in gaps), gaps
    assert 150 <= sum(gaps) / len(gaps) <= 400, gaps
    await wait_until(sim, lambda: sim.published >= 6)  # the PUBACK may trail the delivery
    assert sim.connected and sim.connects == 1


async def test_status_online_is_retained(mosquitto: MosquittoBroker, start_sim: SimFactory) -> None:
    sim = await start_sim()
    async with asyncio.timeout(WAIT):
        await sim.wait_connected()
    async with watch(mosquitto, "device/AP-01/data") as w:  # status published before data
        await w.next("device/AP-01/data")
    async with watch(mosquitto, "device/AP-01/status") as late:  # subscribes after the fact
        message = await late.next("device/AP-01/status")
    assert message.payload == b"online" and message.retain is True


async def test_command_is_acked_with_the_new_state(mosquitto: MosquittoBroker, start_sim: SimFactory) -> None:
    async with watch(mosquitto, "device/AP-01/ack", "device/AP-01/data") as w:
        sim = await start_sim()
        await w.next("device/AP-01/data")  # subscribed to commands by now
        await w.publish(
            "device/AP-01/command", {"commandId": "c-1", "action": "setFanSpeed", "value": 4, "ts": 1763800000.1}
        )
        ack = await w.next_json("device/AP-01/ack")
        assert ack == {"commandId": "c-1", "status": "ok", "state": {"fanSpeed": 4, "powerOn": True}}
        await w.publish("device/AP-01/command", {"commandId": "c-2", "action": "turnOff", "value": None})
        ack = await w.next_json("device/AP-01/ack")
        assert ack == {"commandId": "c-2", "status": "ok", "state": {"fanSpeed": 4, "powerOn": False}}
        await w.publish("device/AP-01/command", {"commandId": "c-3", "action": "setFanSpeed", "value": 9})
        ack = await w.next_json("device/AP-01/ack")
        assert ack["status"] == "error" and "out of range" in ack["error"]
        assert ack["state"] == {"fanSpeed": 4, "powerOn": False}
        while True:  # the readings follow the state (each wait is bounded)
            reading = await w.next_json("device/AP-01/data")
            if reading["powerOn"] is False:
                break
        assert reading["fanSpeed"] == 4
    assert sim.acked == 3


async def test_garbage_command_gets_an_error_ack(mosquitto: MosquittoBroker, start_sim: SimFactory) -> None:
    async with watch(mosquitto, "device/AP-01/ack", "device/AP-01/data") as w:
        sim = await start_sim()
        await w.next("device/AP-01/data")
        await w.client.publish("device/AP-01/command", b"\xffnot json", qos=1)
        ack = await w.next_json("device/AP-01/ack")
    assert ack["status"] == "error" and ack["commandId"] is None and "JSON" in ack["error"]
    assert sim.connected


async def test_repeated_command_id_is_acked_again_and_not_redone(
    mosquitto: MosquittoBroker, start_sim: SimFactory
) -> None:
    async with watch(mosquitto, "device/AP-01/ack", "device/AP-01/data") as w:
        sim = await start_sim()
        await w.next("device/AP-01/data")
        await w.publish("device/AP-01/command", {"commandId": "X", "action": "setFanSpeed", "value": 4})
        first = await w.next_json("device/AP-01/ack")
        await w.publish("device/AP-01/command", {"commandId": "Y", "action": "setFanSpeed", "value": 1})
        assert (await w.next_json("device/AP-01/ack"))["state"]["fanSpeed"] == 1
        await w.publish("device/AP-01/command", {"commandId": "X", "action": "setFanSpeed", "value": 4})
        again = await w.next_json("device/AP-01/ack")
    assert again == first == {"commandId": "X", "status": "ok", "state": {"fanSpeed": 4, "powerOn": True}}
    assert sim.model.fan_speed == 1
    assert sim.model.executed_commands == 2 and sim.acked == 3


async def test_reconnects_and_resumes_after_broker_restart(mosquitto: MosquittoBroker, start_sim: SimFactory) -> None:
    sim = await start_sim()
    async with watch(mosquitto, "device/AP-01/data") as w:
        await w.next("device/AP-01/data")
    await asyncio.to_thread(mosquitto.stop)
    await wait_until(sim, lambda: not sim.connected)
    published_during_outage = sim.published
    await wait_until(sim, lambda: sim.connect_failures >= 1)  # it keeps trying while the broker is down
    await asyncio.to_thread(mosquitto.start)
    async with asyncio.timeout(WAIT):
        await sim.wait_connected()
    async with watch(mosquitto, "device/AP-01/data", "device/AP-01/status") as w:
        assert await w.next_text("device/AP-01/status") == "online"
        for _ in range(3):
            reading = await w.next_json("device/AP-01/data")
            assert set(reading) == CONTRACT_KEYS
    await wait_until(sim, lambda: sim.published >= published_during_outage + 3)  # PUBACKs may trail
    assert sim.reconnects == 1 and sim.disconnects == 1


async def test_abnormal_drop_publishes_the_will_then_comes_back(
    mosquitto: MosquittoBroker, start_sim: SimFactory
) -> None:
    async with watch(mosquitto, "device/AP-01/status", "device/AP-01/data") as w:
        sim = await start_sim()
        assert await w.next_text("device/AP-01/status") == "online"
        await w.next("device/AP-01/data")
        assert sim.abort_connection()
        will = await w.next("device/AP-01/status")
        assert will.payload == b"offline"
        assert await w.next_text("device/AP-01/status") == "online"  # reconnected
        await w.next("device/AP-01/data")
    assert sim.reconnects == 1


@pytest.mark.parametrize("how", ["cancel", "stop"])
async def test_clean_stop_publishes_offline_retained(mosquitto: MosquittoBroker, how: str) -> None:
    sim = SimulatedPurifier(
        device_id="AP-01", password=None, host=mosquitto.host, port=mosquitto.port, interval=0.2, seed=1
    )
    task = asyncio.create_task(sim.run())
    async with asyncio.timeout(WAIT):
        await sim.wait_connected()
    async with watch(mosquitto, "device/AP-01/status") as w:
        assert await w.next_text("device/AP-01/status") == "online"
        if how == "cancel":
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            sim.stop()
            async with asyncio.timeout(WAIT):
                await task
        assert await w.next_text("device/AP-01/status") == "offline"
    assert not sim.connected
    async with watch(mosquitto, "device/AP-01/status") as late:
        message = await late.next("device/AP-01/status")
    assert message.payload == b"offline" and message.retain is True


async def test_password_login(make_mosquitto: MosquittoFactory) -> None:
    broker = make_mosquitto(users={"AP-01": "demo-AP-01", "tester": "t"}, allow_anonymous=False)
    def purifier(password: str) -> SimulatedPurifier:
        return SimulatedPurifier(
            device_id="AP-01", password=password, host=broker.host, port=broker.port,
            interval=0.2, seed=1, backoff_initial=0.05, backoff_max=0.2,
        )

    good, bad = purifier("demo-AP-01"), purifier("wrong")
    tasks = [asyncio.create_task(good.run()), asyncio.create_task(bad.run())]
    try:
        async with asyncio.timeout(WAIT):
            await good.wait_connected()
        await wait_until(bad, lambda: bad.connect_failures >= 2)
        assert bad.connects == 0 and not bad.connected
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _cli(broker: MosquittoBroker, *args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "firmware_sim",
        "purifiers",
        "--host",
        broker.host,
        "--port",
        str(broker.port),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )


async def test_cli_runs_n_purifiers_and_sigterm_publishes_offline(mosquitto: MosquittoBroker) -> None:
    async with watch(mosquitto, "device/+/status", "device/+/data") as w:
        proc = await _cli(mosquitto, "--count", "2", "--interval", "0.2", "--seed", "5")
        try:
            for device in ("AP-01", "AP-02"):
                assert await w.next_text(f"device/{device}/status") == "online"
                assert set(await w.next_json(f"device/{device}/data")) == CONTRACT_KEYS
            proc.send_signal(signal.SIGTERM)
            for device in ("AP-01", "AP-02"):
                assert await w.next_text(f"device/{device}/status") == "offline"
            async with asyncio.timeout(WAIT):
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, out.decode()
    text = out.decode()
    assert "AP-01: connected" in text and "AP-02: connected" in text


async def test_cli_killed_leaves_the_will(mosquitto: MosquittoBroker) -> None:
    async with watch(mosquitto, "device/AP-07/status") as w:
        proc = await _cli(mosquitto, "--count", "1", "--start", "7", "--interval", "1")
        try:
            assert await w.next_text("device/AP-07/status") == "online"
            proc.kill()  # SIGKILL: the kernel closes the TCP connection, no DISCONNECT
            assert await w.next_text("device/AP-07/status") == "offline"
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


async def test_cli_duration_stops_by_itself(mosquitto: MosquittoBroker) -> None:
    proc = await _cli(mosquitto, "--count", "1", "--interval", "0.1", "--duration", "0.5")
    try:
        async with asyncio.timeout(WAIT):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode()
    async with watch(mosquitto, "device/AP-01/status") as late:
        assert await late.next_text("device/AP-01/status") == "offline"


async def test_tls_with_the_ca_file(make_mosquitto: MosquittoFactory, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    (tmp_path / "server.pem").write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    broker = make_mosquitto(
        tls=TLSFiles(cafile=tmp_path / "ca.pem", certfile=tmp_path / "server.pem", keyfile=tmp_path / "server.key")
    )
    assert broker.tls_port is not None
    sim = SimulatedPurifier(
        device_id="AP-01",
        password=None,
        host=broker.host,
        port=broker.tls_port,
        interval=0.2,
        seed=1,
        tls_ca=str(tmp_path / "ca.pem"),
    )
    async with watch(broker, "device/AP-01/data") as w:  # the watcher uses the plain listener
        task = asyncio.create_task(sim.run())
        try:
            assert set(await w.next_json("device/AP-01/data")) == CONTRACT_KEYS
            assert sim.abort_connection()  # shutdown() works on the TLS socket too
            await wait_until(sim, lambda: sim.reconnects == 1)
        finally:
            sim.stop()
            async with asyncio.timeout(WAIT):
                await task
