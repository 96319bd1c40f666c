"""A device (or a fuzzer) repeating a fault writes a log line a minute, not one per event (issue 12, point 1),
and a second CONNECT ends its connection (MQTT-3.1.0-2)."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from tests.bench.mqttload import connect_packet, publish_packet, subscribe_packet
from tests.fixtures.gateway import GatewayFactory, device_password, wait_for


async def logged_in(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet("AP-01", "AP-01", device_password("AP-01")))
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"\x20\x02\x00\x00"
    return reader, writer


async def test_a_second_connect_ends_the_connection_as_a_protocol_violation(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="enabled = false")
    reader, writer = await logged_in(gw.port)
    try:
        writer.write(connect_packet("AP-01", "AP-01", device_password("AP-01")))
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed (amqtt logged an error and read on)
    finally:
        writer.close()
    assert gw.counter("gateway_broker_protocol_errors_total") == 1


@pytest.mark.parametrize("body", [
    b"\x00\x40device/AP-01/data",  # a topic length past the packet's end (amqtt read on into the next packet)
    b"\x00\x04dev\xff\x00\x01{}",  # a topic that is not UTF-8 (amqtt made it "b'dev\\xff'")
    b"\x00",  # not even the topic's length
], ids=["topic-past-the-end", "topic-not-utf8", "one-byte"])
async def test_a_malformed_publish_ends_the_connection_as_a_protocol_violation(
    gateway_factory: GatewayFactory, body: bytes
) -> None:
    gw = await gateway_factory(api="enabled = false")
    reader, writer = await logged_in(gw.port)
    try:
        writer.write(bytes([0x32, len(body)]) + body + publish_packet("device/AP-01/data", b"{}", 1, packet_id=2))
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, the packet after it not taken
    finally:
        writer.close()
    assert gw.counter("gateway_broker_protocol_errors_total") == 1
    assert gw.query("SELECT count(*) FROM readings") == [(0,)]
    assert gw.query("SELECT count(*) FROM quarantine") == [(0,)]


async def test_refused_subscriptions_and_quarantined_payloads_are_logged_once_with_a_count(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(api="enabled = false")
    with structlog.testing.capture_logs() as logs:
        _, writer = await logged_in(gw.port)
        try:
            for i in range(50):
                writer.write(subscribe_packet("#", 1, packet_id=i + 1))
                writer.write(publish_packet("device/AP-01/data", b"not json", 1, packet_id=i + 1))
            await wait_for(lambda: gw.gateway.metrics.total("gateway_quarantined_total") == 50, timeout=10)
            await wait_for(lambda: gw.gateway.metrics.total("gateway_broker_acl_denied_total") == 50, timeout=10)
        finally:
            writer.close()
    events = [entry["event"] for entry in logs]
    assert events.count("broker.acl_denied") == 1
    assert events.count("ingest.quarantined") == 1
