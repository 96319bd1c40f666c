"""How a device's PUBLISH packets enter the broker: delivered as they are read, acknowledged once stored.

**PUBACK after storage.** amqtt 0.12 sends a QoS 1 PUBACK as soon as it has queued the message in
memory. The device then forgets the reading, so a crash, a watchdog restart or a power cut before our
commit lost readings the device had been told were safe (up to the whole delivery queue and the store
writer's queue). We queue the message ourselves and send its PUBACK when the store's receipt for it
is done (`BrokerSink.message` returns it). PUBACKs go in the order the PUBLISH packets came
([MQTT-4.6.0-2]): a message stored early waits for the ones before it. A message that could not be
stored (the store closed first) gets no PUBACK, and neither does anything after it: the device keeps
them and sends them again on its next connection (at least once, never lost).

**Delivered by the reader.** amqtt queues each message for a second task per connection, which
wakes for it through `asyncio.wait` on four futures and a new task per message: two event-loop turns,
a task and a dozen futures per reading, most of the broker's cost at a purifier's trickle (idle CPU is
what a small board pays for all day). QoS 0 and 1 messages are delivered by the reader loop itself, in
arrival order: ingest only parses and queues the record for the store writer, so the one wait in a
delivery is a full writer queue. That wait stops the parsing of this client's packets: what it sent
meanwhile stays as bytes in its stream buffer, and once that is full asyncio stops reading its socket,
which pushes back-pressure into TCP onto the one device that floods. A QoS 1 device also stops getting
PUBACKs, so its in-flight window holds it back. Nothing is parsed ahead of delivery (before, amqtt's
per-session queue was unbounded: 100 purifiers flat out left ~7,000 parsed messages, ~1.5 KB each,
waiting, and the memory stayed with the process).

QoS 2, which waits for the device's PUBREL, keeps amqtt's flow: a task per packet, the session's
(unbounded) queue and the client loop (ours, client_loop.py); devices do not use QoS 2.

When the connection closes (DISCONNECT, takeover, silence, shutdown), a delivery in progress is let
finish before the reader is cancelled (`finish`), and nothing read after that is taken.

Pinned to amqtt 0.12 like the rest of this package (message classes, handler and session fields; the
names are listed in __init__.py and checked at start by compat.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.session import IncomingApplicationMessage

# Messages a reader delivers in a row before it lets other tasks run (a burst already in its stream buffer
# is read without any wait).
READ_BURST = 16


class StoredAckMessage(IncomingApplicationMessage):  # type: ignore[misc]
    """A QoS 1 message whose PUBACK waits for storage; `ack` is its place in the connection's order."""

    __slots__ = ("ack",)

    def __init__(self, packet_id: int, topic: str, data: bytes, retain: bool, ack: list[Any]) -> None:
        super().__init__(packet_id, topic, QOS_1, data, retain)
        self.ack = ack


class StoredAcks:
    """One connection's QoS 1 PUBACKs, sent in arrival order, each once its message is stored.

    The store hands out one receipt for all the messages queued before its next commit, so the messages
    of a connection usually share a few receipts: one callback per receipt, not per message.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport  # asyncio transport of the connection (None: acknowledge nothing)
        # [packet id, state]: None not handed over yet | True stored | the store's receipt, until done
        self._order: deque[list[Any]] = deque()
        self._watched: asyncio.Future[None] | None = None  # the receipt our last callback is on

    def expect(self, packet_id: int) -> list[Any]:
        entry: list[Any] = [packet_id, None]
        self._order.append(entry)
        return entry

    def settle(self, entry: list[Any], receipt: asyncio.Future[None] | None) -> None:
        """The message of `entry` was handed over; acknowledge it once `receipt` is done."""
        if receipt is None:
            entry[1] = True
        elif receipt.done():
            entry[1] = receipt
            _retrieve(receipt)
        else:
            entry[1] = receipt
            if receipt is not self._watched:
                self._watched = receipt
                receipt.add_done_callback(self._receipt_done)
            return
        self._send_ready()

    async def all_sent(self) -> None:
        """Wait until the PUBACK of every message handed over is written, or never can be (its receipt failed).

        For a graceful stop: what the store commits before the connection closes is acknowledged, so the
        device does not send it again after the restart.
        """
        while self._order:
            state = self._order[0][1]
            if state is None or state is True or state.done():
                return  # never handed over (taken after the stop began), or a failed receipt: nothing more goes
            await asyncio.wait((state,))  # (not cancelled with us: the receipt is shared)

    def _receipt_done(self, receipt: asyncio.Future[None]) -> None:
        if receipt is self._watched:
            self._watched = None
        _retrieve(receipt)
        self._send_ready()

    def _send_ready(self) -> None:
        order = self._order
        acks = bytearray()
        while order and _stored(order[0][1]):
            acks += b"\x40\x02" + order.popleft()[0].to_bytes(2, "big")
        transport = self._transport
        if acks and transport is not None and not transport.is_closing():
            transport.write(bytes(acks))  # one write for all that became ready together


def _retrieve(receipt: asyncio.Future[None]) -> None:
    """Mark a failed receipt's error as seen: it is why PUBACKs stop, not a bug for asyncio to report when the
    future is collected (a refused message behind others would log "exception was never retrieved")."""
    if not receipt.cancelled():
        receipt.exception()


def _stored(state: Any) -> bool:
    """Not handed over yet (None) or still waiting for the store: no. A receipt that failed (the store closed
    first) is never stored: it holds its PUBACK and every later one for good, and the device sends them again."""
    if state is True:
        return True
    return state is not None and state.done() and not state.cancelled() and state.exception() is None


class PublishIntake:
    """Replaces the handler's `handle_publish` for one connection (see the module)."""

    def __init__(
        self,
        handler: Any,
        acks: StoredAcks,
        deliver: Callable[[IncomingApplicationMessage], Awaitable[None]],
        *,
        qos2_queued: Callable[[], None],
    ) -> None:
        self._original = handler.handle_publish
        self._qos2_queued = qos2_queued  # told once amqtt's QoS 2 flow has queued a message for the client loop
        self._acks = acks
        self._deliver = deliver
        self._run = 0  # messages delivered since this reader last let other tasks run
        self.undelivered: list[IncomingApplicationMessage] = []  # held by the reader when it was cancelled
        self._delivering = False
        self._closing = False  # the connection is being torn down: take nothing more
        self._idle: asyncio.Future[None] | None = None  # finish() waits on it for the delivery in progress

    async def __call__(self, packet: Any) -> None:
        if self._closing:
            return  # read after the connection began to close: not taken, not acknowledged
        qos = packet.qos
        if qos == QOS_2:  # rare from devices: amqtt's own flow (waits for PUBREL, then the client loop delivers)
            try:
                await self._original(packet)
            finally:
                self._qos2_queued()  # also when sending its PUBCOMP failed: the message is queued by then
            return
        topic, data = packet.topic_name, packet.data
        if topic is None or data is None:
            return  # amqtt ignores these too
        message: IncomingApplicationMessage
        if qos == QOS_1:
            header = packet.variable_header
            if header is None:
                return
            entry = self._acks.expect(header.packet_id)
            message = StoredAckMessage(header.packet_id, topic, data, packet.retain_flag, entry)
        else:
            message = IncomingApplicationMessage(None, topic, qos, data, packet.retain_flag)
        message.publish_packet = packet
        self._delivering = True
        try:
            await self._deliver(message)
        except asyncio.CancelledError:
            # Cancelled in the middle of a delivery although finish() waited for it (the store stayed
            # full past its wait): the broker hands this to the store once the connection has ended. At
            # least once: ingest may have done part of it already (a reading queued, a status noted).
            self.undelivered.append(message)
            raise
        finally:
            self._delivering = False
            if self._idle is not None and not self._idle.done():
                self._idle.set_result(None)
        self._run += 1
        if self._run >= READ_BURST:
            # Let the store writer (and the other devices) run: one flooding device must not hold the
            # loop for a whole buffer.
            self._run = 0
            await asyncio.sleep(0)

    def stop_taking(self) -> None:
        """Take no more messages from this connection (a delivery in progress still ends)."""
        self._closing = True

    async def finish(self, timeout: float) -> None:
        """The connection is closing: take nothing more, and let a delivery in progress end (bounded).

        Its reader is cancelled next. A delivery cut in half (ingest waits only for room in the store's
        queue) would be redone from the start by the leftovers, with part of it already done: a reading
        stored twice, or a status change (offline, say) already noted, so never recorded.
        """
        self.stop_taking()
        if not self._delivering:
            return
        idle = self._idle = asyncio.get_running_loop().create_future()
        # Past the wait the reader is cancelled regardless: the message then goes to `undelivered`.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await idle
