"""The faults of amqtt 0.12 that our broker layer fixes, each shown on bare amqtt and on ours.

The `bare_amqtt` tests are canaries: they assert that the upstream fault still exists in the pinned
amqtt. If one starts failing after an upgrade, upstream fixed it and our override can go.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiomqtt
import pytest
from amqtt.broker import Broker

from tests.fixtures.gateway import RunningGateway, device_password, free_port, wait_for
from tests.fixtures.markers import messages_until_marker


@pytest.fixture
async def bare_amqtt() -> AsyncIterator[int]:
    """amqtt as shipped, with its own auth and ACL plugins giving the same device rights as ours."""
    port = free_port()
    devices = ["AP-01", "AP-02"]
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False},
                "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                    "acl": {d: [f"device/{d}/command"] for d in devices} | {"watcher": ["device/+/status"]},
                    "publish_acl": {d: [f"device/{d}/#"] for d in devices} | {"admin": ["device/#"]},
                },
            },
        }
    )
    await broker.start()
    yield port
    await broker.shutdown()


def client(port: int, device_id: str, password: str | None = None, **kw: object) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", port, identifier=device_id, username=device_id,
        password=password or device_password(device_id), **kw,  # type: ignore[arg-type]
    )


async def received_within(c: aiomqtt.Client, seconds: float) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    try:
        async with asyncio.timeout(seconds):
            async for message in c.messages:
                got.append((str(message.topic), bytes(message.payload)))  # type: ignore[arg-type]
    except TimeoutError:
        pass
    return got


# --- 1. retained messages replayed to clients whose ACL forbids them ---------------------------------

async def leak_scenario(
    port: int, publish_retained: Callable[[], Awaitable[None]],
    received: Callable[[aiomqtt.Client], Awaitable[list[tuple[str, bytes]]]],
) -> list[tuple[str, bytes]]:
    """AP-01 is subscribed to its commands and a retained command waits there; AP-02 then connects."""
    async with client(port, "AP-01") as ap01:
        await ap01.subscribe("device/AP-01/command", qos=1)
        await publish_retained()
        async with client(port, "AP-02") as ap02:
            await ap02.subscribe("device/AP-02/command", qos=1)
            return await received(ap02)


async def test_bare_amqtt_still_leaks_retained_messages(bare_amqtt: int) -> None:
    async def publish() -> None:
        async with client(bare_amqtt, "admin", password="x") as admin:
            await admin.publish("device/AP-01/command", b'{"action":"turnOff"}', qos=1, retain=True)

    leaked = await leak_scenario(bare_amqtt, publish, lambda ap02: received_within(ap02, 1.0))
    assert ("device/AP-01/command", b'{"action":"turnOff"}') in leaked


async def test_guarded_broker_replays_retained_only_within_the_acl(gateway: RunningGateway) -> None:
    broker = gateway.amqtt

    async def publish() -> None:
        # The gateway itself may publish (retained) commands; only AP-01 may ever see this one.
        await gateway.gateway.broker.send("AP-01", b'{"action":"turnOff"}')
        await broker.retain_message(None, "device/AP-01/command", b'{"action":"turnOff"}', 1)

    def until_marker(ap02: aiomqtt.Client) -> Awaitable[list[tuple[str, bytes]]]:
        return messages_until_marker(ap02, gateway, "AP-02")

    assert await leak_scenario(gateway.port, publish, until_marker) == []
    # ...while AP-01 itself still gets its retained command on (re)subscription.
    async with client(gateway.port, "AP-01") as ap01:
        await ap01.subscribe("device/AP-01/command", qos=1)
        assert await messages_until_marker(ap01, gateway, "AP-01") == [
            ("device/AP-01/command", b'{"action":"turnOff"}')]


# --- 2. a silent client is never dropped, so its Will never fires --------------------------------------

async def silent_device(
    port: int, device_id: str, keepalive: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Raw MQTT 3.1.1 CONNECT with a Will, then silence with the TCP connection left open (power cut)."""
    def s(text: str) -> bytes:
        data = text.encode()
        return len(data).to_bytes(2, "big") + data

    will_topic, will_msg = f"device/{device_id}/status", "offline"
    flags = 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02  # user, password, will retain, will qos 1, will, clean
    variable = s("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big")
    payload = s(device_id) + s(will_topic) + s(will_msg) + s(device_id) + s(device_password(device_id))
    body = variable + payload
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(bytes([0x10, len(body)]) + body)
    connack = await asyncio.wait_for(reader.readexactly(4), 5)
    assert connack == b"\x20\x02\x00\x00", connack
    return reader, writer


async def test_bare_amqtt_never_drops_a_silent_client(bare_amqtt: int) -> None:
    _, sock = await silent_device(bare_amqtt, "AP-01", keepalive=1)
    try:
        async with client(bare_amqtt, "watcher", password="x") as watcher:
            await watcher.subscribe("device/+/status", qos=1)
            # 3 x keepalive: the spec says the server must have dropped it after 1.5 x
            assert await received_within(watcher, 3.0) == []
    finally:
        sock.close()


async def test_guarded_broker_drops_a_silent_client_within_1_5_keepalive_and_publishes_its_will(
    gateway: RunningGateway,
) -> None:
    loop = asyncio.get_running_loop()
    reader, sock = await silent_device(gateway.port, "AP-01", keepalive=2)
    connected_at = loop.time()
    try:
        await wait_for(lambda: gateway.gateway.registry.get("AP-01") is not None
                       and gateway.gateway.registry.state("AP-01").online, timeout=2)
        await wait_for(lambda: not gateway.gateway.registry.state("AP-01").online, timeout=5)
        elapsed = loop.time() - connected_at
        # 1.5 x keepalive, plus the scheduling slack of a busy Pi; a guard at 2 x keepalive still fails this
        assert elapsed < 2 * 2, elapsed
        assert elapsed >= 2 * 1.5 - 0.1, elapsed  # and not before: a device may be quiet that long
        assert gateway.counter("gateway_broker_silent_clients_total") == 1
        # the Will was published (not only the connection dropped): it is the retained status now, and
        # ingest took the device offline from it (reason "status", before the disconnect could)
        retained = gateway.amqtt.retained_messages.get("device/AP-01/status")
        assert retained is not None and bytes(retained.data) == b"offline"
        await gateway.flush()
        reasons = [json.loads(d)["reason"] for (d,) in gateway.query(
            "SELECT data FROM events WHERE type = 'device.offline' AND device_id = 'AP-01'")]
        assert reasons == ["status"]
        assert await asyncio.wait_for(reader.read(1), 2) == b""
    finally:
        sock.close()


# --- 3. zero-length retained publish deletes the retained message ---------------------------------------

async def test_guarded_broker_deletes_retained_on_zero_length_publish(gateway: RunningGateway) -> None:
    broker = gateway.amqtt
    async with client(gateway.port, "AP-01") as ap01:
        await ap01.publish("device/AP-01/status", b"online", qos=1, retain=True)
        await wait_for(lambda: "device/AP-01/status" in broker.retained_messages)
        await ap01.publish("device/AP-01/status", b"", qos=0, retain=True)
        await wait_for(lambda: "device/AP-01/status" not in broker.retained_messages)
    await broker.retain_message(None, "device/AP-01/command", b"x", 1)
    await broker.retain_message(None, "device/AP-01/command", b"", 1)
    assert "device/AP-01/command" not in broker.retained_messages
    async with client(gateway.port, "AP-01") as ap01:
        await ap01.subscribe("device/AP-01/command", qos=1)
        assert await messages_until_marker(ap01, gateway, "AP-01") == []

