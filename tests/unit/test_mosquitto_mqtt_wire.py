"""The MQTT 3.1.1 packets of the gateway's client on Mosquitto (gateway/broker/mosquitto/mqtt_wire.py): what
it sends, byte for byte, and the reader's split of a stream cut anywhere, and its limit."""

from __future__ import annotations

from collections import deque

import pytest

from gateway.broker.mosquitto import mqtt_wire as wire
from tests.bench.mqttload import connect_packet, publish_packet, subscribe_packet


def test_connect_subscribe_and_publish_are_the_packets_of_the_spec() -> None:
    # The benchmark's load client frames them independently; a device-side codec checks ours.
    assert wire.connect("_gateway", "_gateway", "pw", 30, clean_session=False) == connect_packet(
        "_gateway", "_gateway", "pw", 30, clean=False)
    assert wire.subscribe(1, [("device/+/data", 1)]) == subscribe_packet("device/+/data", 1, 1)
    assert wire.publish("device/AP-01/cmd", b"x" * 300, qos=1, packet_id=7) == publish_packet(
        "device/AP-01/cmd", b"x" * 300, 1, 7)
    assert wire.publish("t", b"p", qos=1, packet_id=2, dup=True)[0] == 0x3A


def test_pubacks_are_one_buffer_in_order() -> None:
    assert wire.pubacks([1, 258, 65535]) == b"\x40\x02\x00\x01" + b"\x40\x02\x01\x02" + b"\x40\x02\xff\xff"
    assert wire.pubacks([]) == b""


def _stream() -> tuple[bytes, list[wire.Publish], list[tuple[int, bytes]]]:
    big = b"y" * 20_000  # three remaining-length bytes
    packets = [
        (b"\x20\x02\x01\x00", None, (wire.CONNACK, b"\x01\x00")),
        (publish_packet("device/AP-01/data", b'{"pm25":1}', 1, 300), (300, 1, "device/AP-01/data", b'{"pm25":1}'),
         None),
        (publish_packet("device/AP-02/status", b"online", 0), (0, 0, "device/AP-02/status", b"online"), None),
        (b"\x40\x02\x00\x05", None, (wire.PUBACK, b"\x00\x05")),
        (publish_packet("device/AP-03/batch", big, 1, 65535), (65535, 1, "device/AP-03/batch", big), None),
        (b"\xd0\x00", None, (wire.PINGRESP, b"")),
        (publish_packet("device/AP-04/data", b"", 1, 1), (1, 1, "device/AP-04/data", b""), None),
    ]
    stream = b"".join(p for p, _, _ in packets)
    return stream, [m for _, m, _ in packets if m], [o for _, _, o in packets if o]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1000, 1 << 20])
def test_the_reader_takes_a_stream_cut_anywhere(chunk: int) -> None:
    stream, publishes, others = _stream()
    got: deque[wire.Publish] = deque()
    reader = wire.PacketReader(got, 1 << 30)
    seen: list[tuple[int, bytes]] = []
    for start in range(0, len(stream), chunk):
        seen += reader.feed(stream[start:start + chunk])
    assert list(got) == publishes
    assert seen == others


def test_a_new_connection_drops_the_last_ones_partial_packet() -> None:
    got: deque[wire.Publish] = deque()
    reader = wire.PacketReader(got, 1 << 30)
    reader.feed(publish_packet("device/AP-01/data", b"abc", 1, 9)[:5])
    reader.reset()
    reader.feed(publish_packet("device/AP-01/data", b"def", 1, 10))
    assert list(got) == [(10, 1, "device/AP-01/data", b"def")]


@pytest.mark.parametrize("packet", [
    publish_packet("device/AP-01/data", b"x", 2, 1),  # QoS 2: subscribed at 1, never delivered so
    b"\x32\x03\x00\x05a",  # its topic runs past the packet
    b"\x30\x04\x00\x02\xff\xfe",  # topic not UTF-8
    b"\x30\xff\xff\xff\xff\x01",  # remaining length over 4 bytes
    b"\x30\x00",  # no topic length at all, at the end of what was read
    b"\x30\x01\x00",  # half a topic length
    b"\x30\x01\x00" + publish_packet("device/AP-01/data", b"x", 1, 1),  # ... followed by a packet
])
def test_what_no_broker_sends_is_a_protocol_error(packet: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.PacketReader(deque(), 1 << 30).feed(packet)


def test_past_its_limit_the_reader_holds_the_rest_unparsed_until_asked_again() -> None:
    got: deque[wire.Publish] = deque()
    reader = wire.PacketReader(got, 2)
    stream = b"".join(publish_packet("device/AP-01/data", b"%d" % i, 1, i + 1) for i in range(5)) + b"\xd0\x00"
    assert reader.feed(stream) == []
    assert [m[3] for m in got] == [b"0", b"1"]
    got.popleft()
    assert reader.feed() == [] and [m[3] for m in got] == [b"1", b"2"]
    got.clear()
    assert reader.feed() == [] and [m[3] for m in got] == [b"3", b"4"]  # (the PINGRESP still waits)
    got.clear()
    assert reader.feed() == [(wire.PINGRESP, b"")]
