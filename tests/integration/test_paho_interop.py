"""The behaviours of the Eclipse Paho MQTT 3.1.1 interoperability client tests (paho.mqtt.testing,
interoperability/client_test.py), as our own tests, on a config that opens the ACL (broker.acl = "open";
clients "myclientid" and "myclientid2" log in anonymously as configured devices).

Nine of its ten hold. The tenth, a zero-length client id, is refused by design: a client id must name a
configured device (README, CONTRACT). Clients are paho-mqtt (through aiomqtt); where the test needs a
client that dies without a DISCONNECT or holds back its acknowledgements, a raw socket plays it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import pytest

from tests.bench.mqttload import connect_packet, read_packet, remaining_length, subscribe_packet
from tests.fixtures.gateway import GatewayFactory, RunningGateway

A, B = "myclientid", "myclientid2"
TOPICS = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
WILDTOPICS = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
_CLIENTS = "".join(f'[[devices]]\nid = "{cid}"\nkind = "purifier"\n' for cid in (A, B))


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> RunningGateway:
    return await gateway_factory(api="enabled = false", allow_anonymous=True, devices=(), extra=_CLIENTS,
                                 extra_broker='acl = "open"\nkeepalive_grace = 1.5')


def client(gw: RunningGateway, cid: str, **options: Any) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", gw.port, identifier=cid, **options)


async def receive(c: aiomqtt.Client, count: int, timeout: float = 10) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for message in c.messages:
            got.append(message)
            if len(got) == count:
                return got
    return got


async def until_marker(c: aiomqtt.Client, marker_topic: str, qos: int = 1) -> list[aiomqtt.Message]:
    """Publish a marker on `marker_topic` (which the client receives) and return what came before it: a
    negative check that waits for a positive event instead of sleeping. Paho hands a message it receives
    at QoS 2 to the application only at its PUBREL, so one at a lower QoS can overtake it: after messages
    delivered at QoS 2 the marker must be delivered at QoS 2 too (qos=2, to a QoS 2 subscription)."""
    await c.publish(marker_topic, b"marker", qos=qos)
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(10):
        async for message in c.messages:
            if message.payload == b"marker":
                return got
            got.append(message)
    return got


@asynccontextmanager
async def raw(
    gw: RunningGateway, cid: str, *, clean: bool = True, keepalive: int = 60, will: tuple[str, bytes] | None = None
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    packet = connect_packet(cid, None, None, keepalive, clean=clean)
    if will is not None:  # add the Will flag (QoS 1) and its topic and message after the client id
        assert packet[1] < 128  # a one-byte remaining length
        body = bytearray(packet[2:])
        body[7] |= 0x04 | 0x08
        topic, message = will
        body += len(topic).to_bytes(2, "big") + topic.encode() + len(message).to_bytes(2, "big") + message
        packet = b"\x10" + remaining_length(len(body)) + bytes(body)
    writer.write(packet)
    assert (await asyncio.wait_for(reader.readexactly(4), 10))[3] == 0
    try:
        yield reader, writer
    finally:
        writer.close()


async def test_basic(gw: RunningGateway) -> None:
    async with client(gw, A):
        pass
    async with client(gw, A) as c:
        await c.subscribe(TOPICS[0], qos=2)
        for qos in (0, 1, 2):
            await c.publish(TOPICS[0], f"qos {qos}".encode(), qos=qos)
        assert sorted(m.payload for m in await receive(c, 3)) == [b"qos 0", b"qos 1", b"qos 2"]
    async with raw(gw, A) as (reader, writer):  # a second CONNECT on one connection ends it
        writer.write(connect_packet(A, None, None))
        assert await asyncio.wait_for(reader.read(), 10) == b""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)  # a wrong protocol name is refused
    try:
        writer.write(connect_packet(A, None, None).replace(b"\x00\x04MQTT", b"\x00\x04MQTX"))
        assert await asyncio.wait_for(reader.read(), 10) in (b"", b"\x20\x02\x00\x01")
    finally:
        writer.close()


async def test_retained_messages(gw: RunningGateway) -> None:
    async with client(gw, A) as c:
        for qos, topic in enumerate(TOPICS[1:4]):
            await c.publish(topic, f"qos {qos}".encode(), qos=qos, retain=True)
        await c.subscribe(WILDTOPICS[5], qos=2)
        assert sorted(m.payload for m in await receive(c, 3)) == [b"qos 0", b"qos 1", b"qos 2"]
    async with client(gw, A) as c:  # cleared by empty retained messages
        for qos, topic in enumerate(TOPICS[1:4]):
            await c.publish(topic, b"", qos=qos, retain=True)
        await c.subscribe(WILDTOPICS[5], qos=2)
        assert await until_marker(c, "Marker/X") == []


async def test_offline_message_queueing(gw: RunningGateway) -> None:
    async with client(gw, A, clean_session=False) as c:
        await c.subscribe(WILDTOPICS[5], qos=2)
    async with client(gw, B) as b:
        for qos, topic in enumerate(TOPICS[1:4]):
            await b.publish(topic, f"qos {qos}".encode(), qos=qos)
    async with client(gw, A, clean_session=False) as c:
        got = await until_marker(c, "Marker/X", qos=2)  # (the QoS 2 one arrives at QoS 2)
    assert sorted(m.payload for m in got) in ([b"qos 1", b"qos 2"], [b"qos 0", b"qos 1", b"qos 2"])


async def test_will_message(gw: RunningGateway) -> None:
    async with client(gw, B, clean_session=False) as b:
        await b.subscribe(TOPICS[2], qos=2)
        async with raw(gw, A, keepalive=2, will=(TOPICS[2], b"client not disconnected")) as (_, writer):
            writer.transport.abort()  # gone without a DISCONNECT
        assert [m.payload for m in await receive(b, 1)] == [b"client not disconnected"]


async def test_overlapping_subscriptions(gw: RunningGateway) -> None:
    async with client(gw, A) as c:
        await c.subscribe([(WILDTOPICS[6], 2), (WILDTOPICS[0], 1)])
        await c.publish(TOPICS[3], b"overlapping topic filters", qos=2)
        # This server sends one message per matching subscription, each at that subscription's QoS (Paho
        # accepts that, or one message at the highest QoS).
        assert sorted(m.qos for m in await receive(c, 2)) == [1, 2]


async def test_keepalive(gw: RunningGateway) -> None:
    async with client(gw, B, keepalive=0) as b:
        await b.subscribe(TOPICS[4], qos=2)
        async with raw(gw, A, keepalive=2, will=(TOPICS[4], b"keepalive expiry")):
            # silent: no PINGREQ; the broker drops it after 1.5 x keepalive and publishes its Will
            assert [m.payload for m in await receive(b, 1, timeout=15)] == [b"keepalive expiry"]


async def test_redelivery_on_reconnect(gw: RunningGateway) -> None:
    async with raw(gw, B, clean=False) as (reader, writer), client(gw, A) as a:
        writer.write(subscribe_packet(WILDTOPICS[6], 2))
        assert (await asyncio.wait_for(read_packet(reader), 10))[0] == 0x90
        await a.publish(TOPICS[1], b"", qos=1)
        await a.publish(TOPICS[3], b"", qos=2)
        first = [await asyncio.wait_for(read_packet(reader), 10) for _ in range(2)]
        # B acknowledges neither (paused, in Paho's test) and goes
    async with raw(gw, B, clean=False) as (reader, writer):
        again = [await asyncio.wait_for(read_packet(reader), 10) for _ in range(2)]
    assert sorted(body for _, body in again) == sorted(body for _, body in first)  # topics and packet ids
    assert all(header & 0xF8 == 0x38 for header, _ in again)  # PUBLISH with DUP


async def test_zero_length_client_id_is_refused_by_design(gw: RunningGateway) -> None:
    for clean in (False, True):  # Paho expects the clean one to be accepted: a client id must name a device
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(connect_packet("", None, None, clean=clean))
            assert (await asyncio.wait_for(reader.readexactly(4), 10))[3] != 0
        finally:
            writer.close()


async def test_subscribe_failure(gw: RunningGateway) -> None:
    async with raw(gw, A) as (reader, writer):  # device topics keep their rule in the open mode
        writer.write(subscribe_packet("device/AP-01/command", 2))
        assert await asyncio.wait_for(read_packet(reader), 10) == (0x90, b"\x00\x01\x80")


async def test_dollar_topics(gw: RunningGateway) -> None:
    async with client(gw, B, keepalive=0) as b, client(gw, A) as exact:
        await b.subscribe(WILDTOPICS[5], qos=2)
        await exact.subscribe("$" + TOPICS[1], qos=1)
        await b.publish("$" + TOPICS[1], b"", qos=1)  # allowed by the ACL: delivered, not a protocol violation
        assert [str(m.topic) for m in await receive(exact, 1)] == ["$" + TOPICS[1]]
        assert await until_marker(b, "Marker/X") == []  # a wildcard filter does not match a $ topic
        await b.publish("$" + TOPICS[1], b"two", qos=2)  # QoS 2 too (amqtt's own flow refused every $ topic)
        assert [(str(m.topic), m.payload) for m in await receive(exact, 1)] == [("$" + TOPICS[1], b"two")]
