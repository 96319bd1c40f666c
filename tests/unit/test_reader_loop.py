"""The broker's reader loop (gateway/broker/amqtt/reader_loop.py) on a fake amqtt handler."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any

import pytest
from amqtt.adapters import StreamReaderAdapter
from amqtt.errors import MQTTError, ProtocolHandlerError
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.publish import PublishPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.broker.amqtt import reader_loop
from tests.bench.mqttload import publish_packet


class _Handler:
    """amqtt's handler as the loop sees it: its reader holds `data`, then EOF once the handler has started."""

    def __init__(self, data: bytes) -> None:
        self.started = asyncio.Event()
        self.session = SimpleNamespace(keep_alive=0, client_id="AP-01")
        self.plugins_manager = SimpleNamespace(fire_event=self._no_event)
        stream = asyncio.StreamReader()
        stream.feed_data(data)
        self.reader = StreamReaderAdapter(stream)
        self._eof = asyncio.get_running_loop().create_task(self._eof_once_started(stream))
        self._reader_ready = asyncio.Event()
        self._reader_stopped = asyncio.Event()

    async def _eof_once_started(self, stream: asyncio.StreamReader) -> None:
        await self.started.wait()
        stream.feed_eof()

    async def _no_event(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def handle_publish(self, packet: Any) -> None:
        """amqtt's QoS 2 flow waiting for PUBREL: a cancel inside its send becomes ProtocolHandlerError."""
        self.started.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError as exc:
            raise ProtocolHandlerError("Packet handling was cancelled") from exc

    async def handle_connection_closed(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def handle_read_timeout(self) -> None:
        return None


async def test_a_qos2_flow_cut_off_by_the_connections_end_leaves_no_unretrieved_error() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        handler = _Handler(publish_packet("device/AP-01/data", b"{}", 2, packet_id=3))
        errors: list[MQTTError] = []
        await reader_loop._reader_loop(handler, errors.append, 1024)
        await handler._eof
        for _ in range(5):
            await asyncio.sleep(0)
        del handler
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert not errors
    assert not [c for c in reported if "never retrieved" in c.get("message", "")], reported


async def _amqtt_reads(data: bytes) -> PublishPacket:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    return await PublishPacket.from_stream(StreamReaderAdapter(stream))


async def _our_reads(data: bytes) -> tuple[MQTTFixedHeader | None, PublishPacket]:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    fixed = await reader_loop.read_fixed_header(stream)
    assert fixed is not None
    return fixed, reader_loop.publish_packet(fixed, await stream.readexactly(fixed.remaining_length))


_topics = st.text(st.characters(exclude_characters="#+", exclude_categories=["Cs"]), max_size=300)


@settings(max_examples=150, deadline=None)
@given(topic=_topics, payload=st.binary(max_size=20_000), qos=st.sampled_from([0, 1, 2]),
       packet_id=st.integers(1, 65535), dup=st.booleans(), retain=st.booleans())
def test_a_publish_reads_as_amqtts_own_reader_reads_it(topic: str, payload: bytes, qos: int, packet_id: int,
                                                       dup: bool, retain: bool) -> None:
    """Remaining lengths of one to three bytes, every QoS and flag: the same packet as amqtt's from_stream."""
    data = PublishPacket.build(topic, payload, packet_id if qos else None, dup, qos, retain).to_bytes()

    async def both() -> None:
        theirs = await _amqtt_reads(data)
        fixed, ours = await _our_reads(data)
        assert fixed is not None and theirs.fixed_header is not None
        assert (fixed.packet_type, fixed.flags, fixed.remaining_length) == (
            theirs.fixed_header.packet_type, theirs.fixed_header.flags, theirs.fixed_header.remaining_length)
        assert (ours.topic_name, ours.packet_id, ours.data, ours.qos, ours.dup_flag, ours.retain_flag) == (
            theirs.topic_name, theirs.packet_id, theirs.data, theirs.qos, theirs.dup_flag, theirs.retain_flag)

    asyncio.run(both())


async def test_a_publish_shorter_than_its_topic_or_packet_id_is_a_protocol_error() -> None:
    fixed = MQTTFixedHeader(3, 0x02, 12)  # QoS 1
    with pytest.raises(MQTTError):
        reader_loop.publish_packet(fixed, b"\x00\x0adevice/AP")  # the topic runs past the body
    with pytest.raises(MQTTError):
        reader_loop.publish_packet(fixed, b"\x00\x02ab\x00")  # half a packet id
    with pytest.raises(MQTTError):
        reader_loop.publish_packet(MQTTFixedHeader(3, 0, 4), b"\x00\x01#")  # a wildcard in the topic


async def test_a_header_cut_off_by_the_connections_end_is_the_end_and_a_five_byte_length_an_error() -> None:
    for data in (b"", b"\x30", b"\x30\x80", b"\x30\xff\xff"):
        stream = asyncio.StreamReader()
        stream.feed_data(data)
        stream.feed_eof()
        assert await reader_loop.read_fixed_header(stream) is None
    stream = asyncio.StreamReader()
    stream.feed_data(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(MQTTError):
        await reader_loop.read_fixed_header(stream)
