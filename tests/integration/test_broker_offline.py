"""Persistent sessions (issue 12, point 6): QoS 1 messages wait for an offline device (bounded, the oldest
dropped first), and one it never acknowledged is sent again, with DUP, when it reconnects."""

from __future__ import annotations

import asyncio

from tests.bench.mqttload import connect_packet, read_packet, subscribe_packet
from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, wait_for

COMMANDS = "device/AP-01/command"


async def next_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    return await asyncio.wait_for(read_packet(reader), 10)


async def persistent(gw: RunningGateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """AP-01 logged in with clean_session=0: (reader, writer, whether its session was resumed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(connect_packet("AP-01", "AP-01", device_password("AP-01"), clean=False))
    connack = await asyncio.wait_for(reader.readexactly(4), 10)
    assert connack[3] == 0
    return reader, writer, bool(connack[2] & 1)


async def subscribed_then_gone(gw: RunningGateway) -> None:
    reader, writer, _ = await persistent(gw)
    writer.write(subscribe_packet(COMMANDS, 1))
    assert (await next_packet(reader))[0] == 0x90  # SUBACK
    await wait_for(lambda: gw.gateway.broker.command_ready("AP-01"))
    writer.write(b"\xe0\x00")  # DISCONNECT
    writer.close()
    await wait_for(lambda: not gw.gateway.broker.command_ready("AP-01"))


def payload_of(body: bytes) -> bytes:
    topic_length = int.from_bytes(body[:2], "big")
    return body[2 + topic_length + 2:]  # after the topic and the packet id


async def test_messages_for_an_offline_device_wait_for_it_the_oldest_dropped_when_full(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(api="enabled = false", extra_broker="offline_queue = 2")
    await subscribed_then_gone(gw)
    for n in (1, 2, 3):
        await gw.gateway.broker.send("AP-01", b'{"n": %d}' % n)
    await wait_for(lambda: gw.counter("gateway_broker_offline_dropped_total") == 1)
    reader, writer, resumed = await persistent(gw)
    try:
        assert resumed
        got = [await next_packet(reader) for _ in range(2)]
        assert [header & 0xF6 for header, _ in got] == [0x32, 0x32]  # PUBLISH, QoS 1
        assert [payload_of(body) for _, body in got] == [b'{"n": 2}', b'{"n": 3}']
    finally:
        writer.close()


async def test_a_message_the_device_never_acknowledged_is_sent_again_with_dup_on_reconnect(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(api="enabled = false")
    reader, writer, _ = await persistent(gw)
    writer.write(subscribe_packet(COMMANDS, 1))
    assert (await next_packet(reader))[0] == 0x90
    await wait_for(lambda: gw.gateway.broker.command_ready("AP-01"))
    await gw.gateway.broker.send("AP-01", b'{"n": 1}')
    header, body = await next_packet(reader)
    assert header & 0xF6 == 0x32 and not header & 0x08
    writer.close()  # gone without its PUBACK (power lost)
    await wait_for(lambda: not gw.gateway.broker.command_ready("AP-01"))
    reader, writer, resumed = await persistent(gw)
    try:
        assert resumed
        again, body_again = await next_packet(reader)
        assert again & 0x08, "DUP"
        assert body_again == body  # the same packet id and payload
        writer.write(b"\x40\x02" + body[2 + int.from_bytes(body[:2], "big"):][:2])  # PUBACK now
    finally:
        writer.close()
