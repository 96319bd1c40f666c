"""The gateway's own client on Mosquitto (gateway/broker/mosquitto/ingest_client.py) against a real Mosquitto:
a message is acknowledged to Mosquitto only once its receipt is done; one whose receipt failed comes again;
parsing and reading stop while too many messages wait for the sink; keepalive pings."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiomqtt
import pytest

from gateway.broker.mosquitto.config_files import GATEWAY_USER, IngestEndpoint
from gateway.broker.mosquitto.ingest_client import INCOMING_MAX, IngestClient
from tests.bench.mqttload import connect_packet, publish_packet
from tests.fixtures.gateway import wait_for
from tests.fixtures.mosquitto import MosquittoFactory


class ReceiptsByHand:
    """A BrokerSink whose receipts the test settles."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.receipts: list[asyncio.Future[None]] = []

    async def message(self, client_id: str, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        assert (client_id, topic) == ("AP-01", "device/AP-01/data")
        receipt: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.payloads.append(payload)
        self.receipts.append(receipt)
        return receipt

    async def connection(self, *_: Any) -> None: ...

    async def subscribed(self, *_: Any) -> None: ...


def gateway_client(port: int, sink: ReceiptsByHand, keepalive: int = 30) -> IngestClient:
    return IngestClient(IngestEndpoint(None, port), username=GATEWAY_USER, password="gw", sink=sink,
                        keepalive=keepalive)


async def publish(port: int, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="AP-01", username="AP-01", password="pw") as device:
        for payload in payloads:
            await device.publish("device/AP-01/data", payload, qos=1)


async def test_only_what_was_stored_is_acknowledged_and_the_rest_comes_again(make_mosquitto: MosquittoFactory) -> None:
    broker = make_mosquitto(users={GATEWAY_USER: "gw", "AP-01": "pw"}, allow_anonymous=False)
    sink = ReceiptsByHand()
    client = gateway_client(broker.port, sink)
    await client.connect()
    try:
        await publish(broker.port, b"a", b"b")
        await wait_for(lambda: sink.payloads == [b"a", b"b"])
        sink.receipts[0].set_result(None)  # committed: acknowledged
        sink.receipts[1].set_exception(RuntimeError("not stored"))  # not: the client reconnects for it
        await asyncio.wait_for(client.wait_lost(), 5)
        await client.connect()  # the persistent session resumes: Mosquitto sends "b" again, not "a"
        await wait_for(lambda: len(sink.payloads) == 3)
        sink.receipts[2].set_result(None)
        await publish(broker.port, b"c")  # a marker: whatever was due before it has arrived by now
        await wait_for(lambda: len(sink.payloads) == 4)
        assert sink.payloads == [b"a", b"b", b"b", b"c"]
    finally:
        await client.close()


async def test_unacknowledged_messages_wait_in_mosquitto_across_a_restart_of_the_client(
    make_mosquitto: MosquittoFactory,
) -> None:
    broker = make_mosquitto(users={GATEWAY_USER: "gw", "AP-01": "pw"}, allow_anonymous=False)
    first = ReceiptsByHand()
    client = gateway_client(broker.port, first)
    await client.connect()
    await publish(broker.port, b"a")
    await wait_for(lambda: first.payloads == [b"a"])
    await client.close()  # "a" never stored (its receipt is still pending): no PUBACK went to Mosquitto
    await publish(broker.port, b"b")  # while no gateway client is connected: queued in its session
    second = ReceiptsByHand()
    client = gateway_client(broker.port, second)
    await client.connect()
    try:
        await wait_for(lambda: second.payloads == [b"a", b"b"])
    finally:
        await client.close()


class HeldSink(ReceiptsByHand):
    """Takes every message at once (receipt None: nothing to wait for) once `go` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def message(self, client_id: str, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        await self.go.wait()
        self.payloads.append(payload)
        return None


@pytest.mark.parametrize("qos", [0, 1])
async def test_a_store_far_behind_stops_the_client_parsing_and_reading_and_nothing_is_lost(
    make_mosquitto: MosquittoFactory, qos: int,
) -> None:
    broker = make_mosquitto(users={GATEWAY_USER: "gw", "AP-01": "pw"}, allow_anonymous=False)
    sink = HeldSink()
    client = gateway_client(broker.port, sink)
    await client.connect()
    count = INCOMING_MAX * 8
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
        writer.write(connect_packet("AP-01", "AP-01", "pw"))
        assert (await reader.readexactly(4))[3] == 0
        writer.write(b"".join(publish_packet("device/AP-01/data", b"%d" % i, qos, i + 1) for i in range(count)))
        await writer.drain()
        # The sink holds the first one: parsing stops at the bound, reading too (the rest waits in Mosquitto).
        await wait_for(lambda: client._paused)
        assert INCOMING_MAX - 1 <= len(client._incoming) <= INCOMING_MAX  # (the one the sink holds may be out)
        sink.go.set()
        await wait_for(lambda: len(sink.payloads) == count, timeout=20)
        assert sink.payloads == [b"%d" % i for i in range(count)] and not client._paused
        writer.close()
    finally:
        await client.close()


async def test_keepalive_pings_keep_the_connection_and_a_silent_peer_is_dropped(
    make_mosquitto: MosquittoFactory,
) -> None:
    broker = make_mosquitto(users={GATEWAY_USER: "gw"}, allow_anonymous=False)
    client = gateway_client(broker.port, ReceiptsByHand(), keepalive=1)
    await client.connect()
    try:
        with pytest.raises(TimeoutError):  # Mosquitto answers each PINGREQ: still connected after 3 keepalives
            await asyncio.wait_for(client.wait_lost(), 3)
    finally:
        await client.close()

    async def silent_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # CONNECT
        writer.write(b"\x20\x02\x01\x00")  # CONNACK, session present; then never a PINGRESP
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):  # until the client drops the connection
                pass
        writer.close()

    server = await asyncio.start_server(silent_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = gateway_client(port, ReceiptsByHand(), keepalive=1)
    try:
        await client.connect()
        await asyncio.wait_for(client.wait_lost(), 3)  # its PINGREQ unanswered for half a keepalive: dropped
        assert not client.connected
    finally:
        await client.close()
        server.close()
