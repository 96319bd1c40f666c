"""How a device's PUBLISH packets enter the broker: acknowledged only once stored, and throttled.

**PUBACK after storage.** amqtt 0.12 sends a QoS 1 PUBACK as soon as it has queued the message in
memory. The device then forgets the reading, so a crash, a watchdog restart or a power cut before our
commit lost readings the device had been told were safe (up to the whole delivery queue and the store
writer's queue). We queue the message ourselves and send its PUBACK when the store's receipt for it
is done (`BrokerSink.message` returns it). PUBACKs go in the order the PUBLISH packets came
([MQTT-4.6.0-2]): a message stored early waits for the ones before it. A message that could not be
stored (the store closed first) gets no PUBACK, and neither does anything after it: the device keeps
them and sends them again on its next connection (at least once, never lost).

**Throttle.** amqtt reads on without waiting for delivery: its per-session queue is unbounded (a QoS 0
flood grows it without limit; bounding the queue itself would make amqtt drop QoS 0 messages). Our
reader loop calls the publish handler inline, so waiting here stops the parsing of this client's
packets: what it sent meanwhile stays as bytes in its stream buffer, and once that is full asyncio stops
reading its socket, which pushes back-pressure into TCP onto the one device that floods. A QoS 1 device
also stops getting PUBACKs, so its in-flight window holds it back. (Pausing only the transport, as
before, let the reader parse everything already buffered into message objects, ~1.5 KB each: with 100
purifiers flat out ~7,000 waited in the queues, and the memory they took stayed with the process.)

Pinned to amqtt 0.12 like the rest of the broker layer (message classes, handler and session fields).
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from typing import Any

from amqtt.mqtt.constants import QOS_1
from amqtt.session import IncomingApplicationMessage, Session


class StoredAckMessage(IncomingApplicationMessage):  # type: ignore[misc]
    """A QoS 1 message whose PUBACK waits for storage; `ack` is its place in the connection's order."""

    __slots__ = ("ack",)

    def __init__(self, packet_id: int, topic: str, data: bytes, retain: bool, ack: list[Any]) -> None:
        super().__init__(packet_id, topic, QOS_1, data, retain)
        self.ack = ack


class StoredAcks:
    """One connection's QoS 1 PUBACKs, sent in arrival order, each once its message is stored."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport  # asyncio transport of the connection (None: acknowledge nothing)
        self._order: deque[list[Any]] = deque()  # [packet id, stored: None waiting | True | False never]

    def expect(self, packet_id: int) -> list[Any]:
        entry: list[Any] = [packet_id, None]
        self._order.append(entry)
        return entry

    def settle(self, entry: list[Any], receipt: asyncio.Future[None] | None) -> None:
        """The message of `entry` was handed over; acknowledge it once `receipt` is done."""
        if receipt is None:
            entry[1] = True
            self._send_ready()
        elif receipt.done():
            self._stored(entry, receipt)
        else:
            receipt.add_done_callback(functools.partial(self._stored, entry))

    def _stored(self, entry: list[Any], receipt: asyncio.Future[None]) -> None:
        entry[1] = not receipt.cancelled() and receipt.exception() is None
        self._send_ready()

    def _send_ready(self) -> None:
        order = self._order
        acks = bytearray()
        while order and order[0][1] is True:
            acks += b"\x40\x02" + order.popleft()[0].to_bytes(2, "big")
        transport = self._transport
        if acks and transport is not None and not transport.is_closing():
            transport.write(bytes(acks))  # one write for all that became ready together


class PublishThrottle:
    """Replaces the handler's `handle_publish` for one connection (see the module)."""

    def __init__(self, handler: Any, session: Session, acks: StoredAcks, *, high: int) -> None:
        self._original = handler.handle_publish
        self._session = session
        self._acks = acks
        self._high = max(high, 2)
        self._low = self._high // 4
        self._room: asyncio.Future[None] | None = None

    async def __call__(self, packet: Any) -> None:
        queue = self._session.delivered_message_queue
        if packet.qos == QOS_1:
            header = packet.variable_header
            if packet.topic_name is None or packet.data is None or header is None:
                return  # amqtt ignores these too
            entry = self._acks.expect(header.packet_id)
            message = StoredAckMessage(header.packet_id, packet.topic_name, packet.data, packet.retain_flag, entry)
            message.publish_packet = packet
            await queue.put(message)
        else:
            await self._original(packet)
        if queue.qsize() >= self._high:
            room = self._room = asyncio.get_running_loop().create_future()
            try:
                await room
            finally:
                self._room = None

    def delivered(self) -> None:
        """Called after each delivery: read on once the backlog is low again."""
        room = self._room
        if room is not None and not room.done() and self._session.delivered_message_queue.qsize() <= self._low:
            room.set_result(None)
