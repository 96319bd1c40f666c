"""The LanBroker port on both backends (embedded amqtt, managed Mosquitto), and what only Mosquitto has:
its files, its restart by the supervisor, messages it keeps while the gateway's intake is stopped.

Presence and subscriptions reach the gateway from Mosquitto's log, after the device's own CONNACK or SUBACK:
the checks here wait (bounded) for them on both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import stat
import time
from pathlib import Path

import aiomqtt
import pytest

from gateway.broker.mosquitto.ingest_client import IngestClient
from gateway.core.topics import command_topic
from tests.fixtures.gateway import (
    GatewayFactory,
    RunningGateway,
    cheap_mosquitto_hash,
    device_password,
    free_port,
    running,
    wait_for,
    write_config,
)

COMMAND = b'{"action":"turnOff"}'


def device(gw: RunningGateway, device_id: str, password: str | None = None, **kw: object) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", gw.port, identifier=device_id, username=device_id,
                          password=device_password(device_id) if password is None else password,
                          **kw)  # type: ignore[arg-type]


def reading(pm25: float) -> bytes:
    return json.dumps({"timestamp": int(time.time() * 1000), "pm25": pm25, "fanSpeed": 2, "powerOn": True}).encode()


def readings(gw: RunningGateway, device_id: str) -> int:
    return int(gw.query("SELECT count(*) FROM readings WHERE device_id = ?", (device_id,))[0][0])


async def test_presence_command_readiness_and_a_command(lan_gateway: RunningGateway) -> None:
    broker = lan_gateway.gateway.broker
    registry = lan_gateway.gateway.registry
    assert (broker.clients_connected(), broker.command_ready("AP-01")) == (0, False)
    async with asyncio.timeout(20), device(lan_gateway, "AP-01") as ap01:
        await wait_for(lambda: broker.clients_connected() == 1 and registry.state("AP-01").online)
        assert not broker.command_ready("AP-01")  # connected, not subscribed yet
        await ap01.subscribe(command_topic("AP-01"), qos=1)
        await wait_for(lambda: broker.command_ready("AP-01"))
        assert not broker.command_ready("AP-02")
        await broker.send("AP-01", COMMAND)
        async for message in ap01.messages:
            assert (str(message.topic), message.payload, message.qos) == (command_topic("AP-01"), COMMAND, 1)
            break
    await wait_for(lambda: broker.clients_connected() == 0 and not registry.state("AP-01").online)
    assert not broker.command_ready("AP-01")
    await lan_gateway.flush()
    events = [e for (e,) in lan_gateway.query("SELECT type FROM events WHERE device_id='AP-01' ORDER BY id")]
    assert events == ["device.online", "device.offline"]


async def test_a_wrong_password_is_refused(lan_gateway: RunningGateway) -> None:
    with pytest.raises(aiomqtt.MqttCodeError):
        async with device(lan_gateway, "AP-01", password="wrong"):
            pass
    with pytest.raises(aiomqtt.MqttCodeError):
        async with aiomqtt.Client("127.0.0.1", lan_gateway.port, identifier="AP-01"):  # anonymous
            pass
    assert lan_gateway.gateway.broker.clients_connected() == 0


async def test_publishing_on_another_devices_topic_stores_nothing(lan_gateway: RunningGateway) -> None:
    for topic, payload in (("device/AP-02/data", reading(1.0)), ("device/AP-01/command", COMMAND)):
        # The embedded broker refuses the message and keeps the connection; Mosquitto 2.0.11 closes it.
        with contextlib.suppress(aiomqtt.MqttError):
            async with device(lan_gateway, "AP-01") as client:
                await client.publish(topic, payload, qos=1)
    async with device(lan_gateway, "AP-01") as client:
        await client.publish("device/AP-01/data", reading(2.0), qos=1)  # its own: accepted
    await wait_for(lambda: readings(lan_gateway, "AP-01") == 1)
    await lan_gateway.flush()
    assert lan_gateway.query("SELECT device_id, json_extract(metrics, '$.pm25') FROM readings") == [("AP-01", 2.0)]
    assert lan_gateway.query("SELECT count(*) FROM quarantine") == [(0,)]


async def test_another_devices_commands_never_reach_a_device(lan_gateway: RunningGateway) -> None:
    # The embedded broker refuses the subscription (SUBACK 0x80); Mosquitto grants it and delivers nothing.
    broker = lan_gateway.gateway.broker
    received: list[tuple[str, bytes]] = []
    async with asyncio.timeout(20), device(lan_gateway, "AP-01") as client:
        await client.subscribe(command_topic("AP-02"), qos=1)
        await client.subscribe(command_topic("AP-01"), qos=1)
        await wait_for(lambda: broker.command_ready("AP-01"))
        await broker.send("AP-02", COMMAND)
        await broker.send("AP-01", b"marker")  # sent after it, to the same connection: arrives after it
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            received.append((str(message.topic), message.payload))
            if message.payload == b"marker":
                break
    assert received == [(command_topic("AP-01"), b"marker")]


# ------------------------------------------------------------------------------------ Mosquitto only


async def test_mosquitto_files_are_owner_only_and_hold_no_password(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(backend="mosquitto")
    folder = gw.gateway.loaded.data_dir / "mosquitto"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    written = {p.name: p for p in folder.iterdir() if p.is_file() and not p.is_socket()}
    for name in ("mosquitto.conf", "passwords", "acl"):  # ours (the folder keeps Mosquitto's own pid file private)
        assert stat.S_IMODE(written[name].stat().st_mode) == 0o600, name
    for path in written.values():
        assert device_password("AP-01") not in path.read_text(errors="replace")
    conf = written["mosquitto.conf"].read_text().splitlines()
    assert "max_queued_messages 0" in conf and "max_inflight_messages 1000" in conf


async def test_mosquitto_gets_none_of_the_daemons_systemd_variables(
        gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Mosquitto, built with systemd support, sends READY=1 to an inherited $NOTIFY_SOCKET once its listeners
    are open: before the gateway's session on it existed, so devices let in on that signal had their first
    readings acknowledged by Mosquitto and dropped (no subscriber yet)."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))  # nobody listens: sends are dropped
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    gw = await gateway_factory(backend="mosquitto")
    environ = _environment(gw.gateway.broker.child.pid)  # type: ignore[attr-defined]
    assert [v for v in environ if v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_"))] == []


def _environment(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")


async def test_devices_find_a_listener_only_once_the_gateways_session_on_mosquitto_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mosquitto acknowledges a device's QoS 1 message that no session subscribed to, and drops it. On a new
    data dir the gateway's session is made (and saved) before any device listener opens."""
    port = free_port()
    logins: list[tuple[bool, bool]] = []  # per login of the gateway's client: (devices could connect, session kept)
    connect = IngestClient.connect

    async def watched(client: IngestClient, timeout: float = 10.0) -> bool:
        devices_in = await _accepts(port)
        session = await connect(client, timeout)
        logins.append((devices_in, session))
        return session

    monkeypatch.setattr(IngestClient, "connect", watched)
    config = write_config(tmp_path, backend="mosquitto", port=port)
    async with running(config):
        pass
    assert logins == [(False, False), (True, True)]
    async with running(config):  # the session is on disk now: one start
        pass
    assert logins[2:] == [(True, True)]


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def test_a_killed_mosquitto_is_restarted_and_devices_come_back(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(backend="mosquitto")
    broker = gw.gateway.broker
    registry = gw.gateway.registry
    child = broker.child  # type: ignore[attr-defined]
    async with device(gw, "AP-01") as client:
        await client.publish("device/AP-01/data", reading(1.0), qos=1)
        await wait_for(lambda: registry.state("AP-01").online and readings(gw, "AP-01") == 1)
    old_pid = child.pid
    async with device(gw, "AP-02"):
        await wait_for(lambda: registry.state("AP-02").online)
        child.kill()
        await wait_for(lambda: not registry.state("AP-02").online)  # its connection died with Mosquitto
    health = gw.gateway.supervisor.health["link:lan-broker"]
    await wait_for(lambda: child.running and child.pid != old_pid and health.restarts == 1, timeout=10)
    await wait_for(lambda: broker.bound_ports() == [gw.port])
    async def publish_again() -> None:
        async with device(gw, "AP-02") as client:
            await client.publish("device/AP-02/data", reading(2.0), qos=1)
    for _ in range(50):  # the supervisor's back-off: Mosquitto listens again within ~1 s
        try:
            await publish_again()
            break
        except aiomqtt.MqttError:
            await asyncio.sleep(0.1)
    await wait_for(lambda: readings(gw, "AP-02") == 1)
    await wait_for(lambda: not registry.state("AP-02").online)


async def test_what_mosquitto_took_while_intake_was_stopped_is_stored_at_the_next_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, backend="mosquitto")
    async with running(config) as gw:
        async with device(gw, "AP-01") as client:
            await client.publish("device/AP-01/data", reading(1.0), qos=1)
            await wait_for(lambda: readings(gw, "AP-01") == 1)
            await gw.gateway.broker.stop_intake()
            for i in range(5):  # PUBACKed by Mosquitto, queued in the gateway's persistent session
                await client.publish("device/AP-01/data", reading(10.0 + i), qos=1)
        await gw.flush()
        assert readings(gw, "AP-01") == 1
    async with running(config) as gw:
        await wait_for(lambda: readings(gw, "AP-01") == 6)
        pm = [p for (p,) in gw.query("SELECT json_extract(metrics, '$.pm25') FROM readings ORDER BY id")]
        assert pm == [1.0, 10.0, 11.0, 12.0, 13.0, 14.0]


async def test_a_reload_lets_a_new_device_log_in_to_mosquitto(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(backend="mosquitto", devices=["AP-01"])
    with pytest.raises(aiomqtt.MqttCodeError):
        async with device(gw, "AP-09"):
            pass
    gw.config_path.write_text(gw.config_path.read_text() + (
        f'[[devices]]\nid = "AP-09"\npassword_hash_mosquitto = "{cheap_mosquitto_hash(device_password("AP-09"))}"\n'))
    assert gw.gateway.reload()
    for _ in range(50):  # SIGHUP: Mosquitto reads its password file again at its next loop turn
        try:
            async with device(gw, "AP-09") as client:
                await client.publish("device/AP-09/data", reading(3.0), qos=1)
            break
        except aiomqtt.MqttCodeError:
            await asyncio.sleep(0.05)
    await wait_for(lambda: readings(gw, "AP-09") == 1)


async def test_a_mosquitto_left_behind_by_a_killed_daemon_is_stopped_at_the_next_start(tmp_path: Path) -> None:
    config = write_config(tmp_path, backend="mosquitto")
    async with running(config) as gw:
        folder = gw.gateway.loaded.data_dir / "mosquitto"
    # What a daemon killed with -9 leaves behind (outside systemd): its Mosquitto, running on the same files.
    orphan = await asyncio.create_subprocess_exec(
        "/usr/sbin/mosquitto", "-c", str(folder / "mosquitto.conf"), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        await wait_for(lambda: (folder / "mosquitto.pid").exists())
        async with running(config) as gw:
            await asyncio.wait_for(orphan.wait(), 1)  # stopped before the new one started
            async with device(gw, "AP-01") as client:
                await client.publish("device/AP-01/data", reading(1.0), qos=1)
            await wait_for(lambda: readings(gw, "AP-01") == 1)
    finally:
        if orphan.returncode is None:
            orphan.kill()
        await orphan.wait()


async def test_a_reload_that_names_another_backend_keeps_the_running_ones_logins(tmp_path: Path) -> None:
    config = write_config(tmp_path, backend="mosquitto")  # every device has both hashes
    config.write_text(config.read_text().replace('backend = "mosquitto"', 'backend = "embedded"'))
    async with running(config) as gw:
        config.write_text(config.read_text().replace('backend = "embedded"', 'backend = "mosquitto"'))
        assert gw.gateway.reload()  # applied: devices and their hashes; the backend only at the next start
        async with device(gw, "AP-01") as client:  # the embedded broker still checks the argon2 hash
            await client.publish("device/AP-01/data", reading(1.0), qos=1)
        await wait_for(lambda: readings(gw, "AP-01") == 1)
