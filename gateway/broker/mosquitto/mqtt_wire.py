"""MQTT 3.1.1 packets of the gateway's own client on Mosquitto (ingest_client.py): the few it sends, and a
reader that splits what Mosquitto sends into packets.

Only what a QoS 1 subscriber that publishes QoS 1 commands needs: CONNECT, SUBSCRIBE, PUBLISH, PUBACK,
PINGREQ and DISCONNECT out; CONNACK, SUBACK, PUBLISH, PUBACK and PINGRESP in. One local connection carries
every device's data, so the reader takes every complete packet of a chunk in one pass (a general client
such as paho reads each packet with three or four recv calls and builds a message object for it), and a
batch of PUBACKs is built in one call and sent in one write.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 0x20, 0x30, 0x40, 0x90, 0xD0
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
_PUBACK_WORD = 0x40020000  # a PUBACK is 4 bytes: 0x40, remaining length 2, the packet id
_MAX_LENGTH_BYTES = 4  # the remaining length takes at most 4 bytes (256 MB)

# (packet id, QoS, topic, payload) of a PUBLISH received; the packet id is 0 at QoS 0
Publish = tuple[int, int, str, bytes]


class ProtocolError(Exception):
    """Mosquitto sent something this client cannot take (a malformed packet, QoS 2)."""


def connect(client_id: str, username: str, password: str, keepalive: int, *, clean_session: bool) -> bytes:
    flags = 0xC0 | (0x02 if clean_session else 0x00)  # username and password present
    body = (_string("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big") + _string(client_id)
            + _string(username) + _string(password))
    return _packet(0x10, body)


def subscribe(packet_id: int, filters: Sequence[tuple[str, int]]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_string(topic) + bytes((qos,)) for topic, qos in filters)
    return _packet(0x82, body)


def publish(topic: str, payload: bytes, *, qos: int, packet_id: int = 0, dup: bool = False) -> bytes:
    header = PUBLISH | (0x08 if dup else 0) | (qos << 1)
    body = _string(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return _packet(header, body)


def pubacks(packet_ids: Sequence[int]) -> bytes:
    """One PUBACK per id, in order, as one buffer."""
    return struct.pack(f">{len(packet_ids)}I", *[_PUBACK_WORD | pid for pid in packet_ids])


class PacketReader:
    """Splits the byte stream into packets: PUBLISHes go to `publishes` (in order), the others are returned
    by feed() as (packet type, body). A packet cut between two chunks waits for the rest. Parsing stops while
    `publishes` holds `limit` or more: the rest of the chunk waits, unparsed, for the next feed()."""

    __slots__ = ("_rest", "limit", "publishes")

    def __init__(self, publishes: deque[Publish], limit: int) -> None:
        self.publishes = publishes
        self.limit = limit
        self._rest = b""

    def reset(self) -> None:
        """A new connection: what was left of the last one's stream is dropped."""
        self._rest = b""

    def feed(self, data: bytes = b"") -> list[tuple[int, bytes]]:
        """Parse what `data` completes (nothing new: what was held back at the limit)."""
        if self._rest:
            data = self._rest + data
        append = self.publishes.append
        others: list[tuple[int, bytes]] = []
        end = len(data)
        pos = 0
        publishes, limit = self.publishes, self.limit
        while end - pos >= 2 and len(publishes) < limit:
            first = data[pos]
            length = data[pos + 1]
            head = pos + 2
            if length & 0x80:  # more length bytes (a packet over 127 bytes)
                length &= 0x7F
                shift = 7
                while True:
                    if head >= end:
                        self._rest = data[pos:]
                        return others
                    byte = data[head]
                    head += 1
                    length |= (byte & 0x7F) << shift
                    if not byte & 0x80:
                        break
                    shift += 7
                    if shift >= 7 * _MAX_LENGTH_BYTES:
                        raise ProtocolError("remaining length over 4 bytes")
            stop = head + length
            if stop > end:
                break
            if first & 0xF0 == PUBLISH:
                qos = (first >> 1) & 0x03
                if qos > 1:
                    raise ProtocolError(f"PUBLISH at QoS {qos} (subscribed at QoS 1)")
                if length < 2:
                    raise ProtocolError("PUBLISH without its topic's length")
                topic_end = head + 2 + ((data[head] << 8) | data[head + 1])
                if topic_end + 2 * qos > stop:
                    raise ProtocolError("PUBLISH shorter than its topic")
                try:
                    topic = data[head + 2:topic_end].decode()
                except UnicodeDecodeError as exc:
                    raise ProtocolError("PUBLISH topic is not UTF-8") from exc
                if qos:
                    append(((data[topic_end] << 8) | data[topic_end + 1], 1, topic, data[topic_end + 2:stop]))
                else:
                    append((0, 0, topic, data[topic_end:stop]))
            else:
                others.append((first & 0xF0, data[head:stop]))
            pos = stop
        self._rest = data[pos:] if pos < end else b""
        return others


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _packet(header: int, body: bytes) -> bytes:
    n = len(body)
    length = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | 0x80 if n else byte)
        if not n:
            return bytes((header,)) + bytes(length) + body
