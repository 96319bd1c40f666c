"""The gateway's own client on Mosquitto (gateway/broker/mosquitto/ingest_client.py) against a real Mosquitto:
a message is acknowledged to Mosquitto only once its receipt is done; one whose receipt failed comes again."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt

from gateway.broker.mosquitto.config_files import GATEWAY_USER, IngestEndpoint
from gateway.broker.mosquitto.ingest_client import IngestClient
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
