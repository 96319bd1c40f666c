"""The outbox lanes' QoS 1 publisher (gateway/uplink/acks.py) on a real aiomqtt connection to Mosquitto."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest

from gateway.core.errors import IncompatibleLibraryError
from gateway.uplink import acks
from gateway.uplink.acks import AckTracker, check, check_installed
from tests.fixtures.gateway import wait_for
from tests.fixtures.mosquitto import MosquittoBroker


async def _received(broker: MosquittoBroker, topic: str, into: list[tuple[str, bytes]], ready: asyncio.Event) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="acks-subscriber") as sub:
        await sub.subscribe(topic, qos=1)
        ready.set()
        async for message in sub.messages:
            assert isinstance(message.payload, bytes)
            into.append((str(message.topic), message.payload))


async def test_every_message_arrives_in_order_and_each_puback_calls_back_with_its_token(
    mosquitto: MosquittoBroker,
) -> None:
    received: list[tuple[str, bytes]] = []
    ready = asyncio.Event()
    subscriber = asyncio.create_task(_received(mosquitto, "t/#", received, ready))
    await asyncio.wait_for(ready.wait(), 10)
    acked: list[int] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="acks-publisher",
                              protocol=aiomqtt.ProtocolVersion.V311) as client:
        tracker: AckTracker[int] = AckTracker(client, acked.append)
        # 1,000 messages in flushes of 1 to 300 (one write each), two topics, payloads across the
        # remaining length's one- and two-byte forms.
        sent: list[tuple[str, bytes]] = []
        n = 0
        for group in (1, 7, 300, 2, 690):
            for _ in range(group):
                topic, payload = f"t/{n % 2}", b"x" * (n % 200) + str(n).encode()
                tracker.publish(topic, payload, n)
                sent.append((topic, payload))
                n += 1
            tracker.flush()
        await wait_for(lambda: len(acked) == n and len(received) == n, timeout=20)
        # A publish of aiomqtt's own still gets its PUBACK through paho (not taken by the tracker).
        await asyncio.wait_for(client.publish("t/other", b"own", qos=1), 10)
    subscriber.cancel()
    await asyncio.gather(subscriber, return_exceptions=True)
    assert sorted(acked) == list(range(n))
    assert received[:n] == sent  # each topic's messages in order, and MQTT keeps one client's order
    assert received[n:] == [("t/other", b"own")]


async def test_a_topic_with_a_wildcard_is_refused(mosquitto: MosquittoBroker) -> None:
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="acks-wildcard") as client:
        tracker: AckTracker[int] = AckTracker(client, lambda _: None)
        with pytest.raises(ValueError, match="not a topic"):
            tracker.publish("t/+", b"x", 1)


async def test_the_private_names_it_needs_are_checked(mosquitto: MosquittoBroker) -> None:
    client = aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="acks-check")
    check(client)  # the pinned versions have them all

    class Stripped:
        _client = object()

    with pytest.raises(IncompatibleLibraryError, match=r"is not a paho\.mqtt\.client\.Client"):
        check(Stripped())  # type: ignore[arg-type]


async def test_a_missing_or_changed_private_name_or_another_version_stops_the_start_naming_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_installed()  # the pinned versions pass
    monkeypatch.delattr(paho.Client, "_mid_generate")
    monkeypatch.setattr(acks, "PINNED", {**acks.PINNED, "paho-mqtt": "1.6.1"})
    original_init = paho.Client.__init__

    def init_with_a_list(self: paho.Client, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._out_packet = []  # type: ignore[assignment]

    monkeypatch.setattr(paho.Client, "__init__", init_with_a_list)
    with pytest.raises(IncompatibleLibraryError) as err:
        check_installed()
    text = str(err.value)
    assert "Client._mid_generate is missing" in text and "Client._out_packet has another form (list)" in text
    assert "paho-mqtt 2.2.0, the uplink was written against 1.6.1" in text


async def test_a_batch_flushed_while_paho_waits_for_its_write_callback_leaves_no_writer_behind(
    mosquitto: MosquittoBroker,
) -> None:
    acked: list[int] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="acks-writer",
                              protocol=aiomqtt.ProtocolVersion.V311) as client:
        tracker: AckTracker[int] = AckTracker(client, acked.append)
        inner = client._client
        inner.publish("t/own", b"own", 1)  # paho registers a write callback: aiomqtt adds it on the next loop turn
        tracker.publish("t/0", b"ours", 0)
        tracker.flush()  # in the same turn
        writes = [0]
        loop_write = inner.loop_write

        def counted() -> Any:
            writes[0] += 1
            return loop_write()

        inner.loop_write = counted  # type: ignore[method-assign]
        await wait_for(lambda: acked == [0], timeout=10)
        await asyncio.sleep(0.3)
    # The callback wrote what was queued and ended its registration; a writer left registered on the socket
    # (always writable) was called every loop turn: thousands of times here.
    assert writes[0] <= 2
