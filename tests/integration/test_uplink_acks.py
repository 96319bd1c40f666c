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
from tests.fixtures.mqtt_packets import read_packet


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


async def _acks_in_one_write(count: int, connected: asyncio.Event) -> tuple[asyncio.Server, int]:
    """A peer that speaks just enough MQTT 3.1.1: CONNACK, then once `count` QoS 1 PUBLISHes arrived, all their
    PUBACKs in one write (what a busy cloud broker's socket can hold for one of our reads)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ids: list[bytes] = []
        try:
            while True:
                kind, body = await read_packet(reader)
                if kind >> 4 == 1:  # CONNECT
                    writer.write(b"\x20\x02\x00\x00")
                    connected.set()
                elif kind >> 4 == 3:  # PUBLISH, QoS 1
                    start = 2 + int.from_bytes(body[:2], "big")
                    ids.append(body[start:start + 2])
                    if len(ids) == count:
                        writer.write(b"".join(b"\x40\x02" + i for i in ids))
                elif kind >> 4 == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_more_pubacks_in_one_read_than_one_turn_reads_are_all_handled_without_new_bytes() -> None:
    count = 3000  # PUBACKs in one write: more than one event-loop turn's reads (_READS_PER_TURN)
    connected = asyncio.Event()
    server, port = await _acks_in_one_write(count, connected)
    acked: list[int] = []
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier="acks-many", keepalive=600,
                                  protocol=aiomqtt.ProtocolVersion.V311) as client:
            tracker: AckTracker[int] = AckTracker(client, acked.append)
            for n in range(count):
                tracker.publish("t/many", b"x", n)
            tracker.flush()
            # Nothing else arrives on the socket (no ping for 600 s): the reads left over must be scheduled.
            await wait_for(lambda: len(acked) == count, timeout=10)
    finally:
        server.close()
        await server.wait_closed()
    assert sorted(acked) == list(range(count))
