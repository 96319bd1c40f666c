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
from tests.fixtures.mqtt_packets import read_packet


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
    # 2 s: a PINGRESP is due within half a keepalive, and 0.5 s (keepalive 1) is within a loaded CI's pauses.
    client = gateway_client(broker.port, ReceiptsByHand(), keepalive=2)
    await client.connect()
    try:
        with pytest.raises(TimeoutError):  # Mosquitto answers each PINGREQ: still connected after 2 keepalives
            await asyncio.wait_for(client.wait_lost(), 4.5)
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


class _ScriptedMosquitto:
    """A peer in Mosquitto's place: CONNACK with the session present, then the PUBLISHes given (QoS 1, ids 1..n);
    records the packet ids of the PUBACKs that come back, in their order."""

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.pubacks: list[int] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await read_packet(reader)  # CONNECT
            writer.write(b"\x20\x02\x01\x00")
            writer.write(b"".join(publish_packet("device/AP-01/data", p, 1, i + 1)
                                  for i, p in enumerate(self.payloads)))
            while True:
                kind, body = await read_packet(reader)
                if kind >> 4 == 4:
                    self.pubacks.append(int.from_bytes(body[:2], "big"))
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class _FirstWaitsSecondStored(ReceiptsByHand):
    """The first message's receipt waits for the test; the second was stored already (a resend: no receipt)."""

    async def message(self, client_id: str, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        if self.payloads:
            self.payloads.append(payload)
            return None
        return await super().message(client_id, topic, payload)


async def test_a_message_stored_already_is_acknowledged_after_the_ones_before_it() -> None:
    peer = _ScriptedMosquitto([b"a", b"b"])
    sink = _FirstWaitsSecondStored()
    client = gateway_client(await peer.start(), sink)
    try:
        await client.connect()
        await wait_for(lambda: sink.payloads == [b"a", b"b"])
        sink.receipts[0].set_result(None)
        await wait_for(lambda: len(peer.pubacks) == 2)
        assert peer.pubacks == [1, 2]  # in the order the PUBLISHes came (MQTT-4.6.0-2)
    finally:
        await client.close()
        await peer.stop()


class _FailsOnce(ReceiptsByHand):
    """Raises on its first message (a bug), then takes messages."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def message(self, client_id: str, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug in the sink")
        return await super().message(client_id, topic, payload)


async def test_a_consumer_that_fails_drops_the_connection_and_the_next_one_consumes_again() -> None:
    peer = _ScriptedMosquitto([b"a"])
    sink = _FailsOnce()
    client = gateway_client(await peer.start(), sink)
    try:
        await client.connect()
        await asyncio.wait_for(client.wait_lost(), 5)  # not a connection that stays up with nobody reading it
        await client.connect()
        await wait_for(lambda: sink.payloads == [b"a"])  # sent again on the new connection, consumed
    finally:
        await client.close()
        await peer.stop()
