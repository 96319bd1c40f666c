"""The gateway's own client on Mosquitto (gateway/broker/mosquitto/ingest_client.py) against a real Mosquitto:
a message is acknowledged to Mosquitto only once its receipt is done; one whose receipt failed comes again."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt

from gateway.broker.mosquitto.config_files import GATEWAY_USER, IngestEndpoint
from gateway.broker.mosquitto.ingest_client import INCOMING_MAX, IngestClient
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


async def publish(port: int, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="AP-01", username="AP-01", password="pw") as device:
        for payload in payloads:
            await device.publish("device/AP-01/data", payload, qos=1)


async def test_only_what_was_stored_is_acknowledged_and_the_rest_comes_again(make_mosquitto: MosquittoFactory) -> None:
    broker = make_mosquitto(users={GATEWAY_USER: "gw", "AP-01": "pw"}, allow_anonymous=False)
    sink = ReceiptsByHand()
    client = IngestClient(IngestEndpoint(None, broker.port), username=GATEWAY_USER, password="gw", sink=sink)
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
    client = IngestClient(IngestEndpoint(None, broker.port), username=GATEWAY_USER, password="gw", sink=first)
    await client.connect()
    await publish(broker.port, b"a")
    await wait_for(lambda: first.payloads == [b"a"])
    await client.close()  # "a" never stored (its receipt is still pending): no PUBACK went to Mosquitto
    await publish(broker.port, b"b")  # while no gateway client is connected: queued in its session
    second = ReceiptsByHand()
    client = IngestClient(IngestEndpoint(None, broker.port), username=GATEWAY_USER, password="gw", sink=second)
    await client.connect()
    try:
        await wait_for(lambda: second.payloads == [b"a", b"b"])
    finally:
        await client.close()


class BlockedSink(ReceiptsByHand):
    """A store that takes nothing until `gate` is set (it is far behind), then stores everything at once."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def message(self, client_id: str, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        await self.gate.wait()
        self.payloads.append(payload)
        return None


async def test_a_store_far_behind_stops_the_client_reading_and_parsing_what_it_cannot_take(
    make_mosquitto: MosquittoFactory,
) -> None:
    broker = make_mosquitto(users={GATEWAY_USER: "gw", "AP-01": "pw"}, allow_anonymous=False)
    sink = BlockedSink()
    client = IngestClient(IngestEndpoint(None, broker.port), username=GATEWAY_USER, password="gw", sink=sink)
    peak = [0]
    on_message = client._on_message

    def counted(*args: Any) -> None:
        on_message(*args)
        peak[0] = max(peak[0], len(client._incoming))

    client._client.on_message = counted
    await client.connect()
    try:
        total = 2 * 1000
        await publish(broker.port, *(str(i).encode() for i in range(total)))  # Mosquitto took them all
        # read as far as the client will: paused at its bound, or (before the fix) everything
        await wait_for(lambda: getattr(client, "_unread", None) is not None or len(client._incoming) >= total - 1,
                       timeout=20)
        sink.gate.set()
        await wait_for(lambda: len(sink.payloads) == total, timeout=20)
        assert sink.payloads == [str(i).encode() for i in range(total)]
        # before the fix all 2,000 were read and parsed while the store took none
        assert peak[0] <= INCOMING_MAX + 1
    finally:
        await client.close()
