"""A cheaper packet reader for amqtt 0.12's broker-side protocol handler.

amqtt's ``ProtocolHandler._reader_loop`` costs, per packet received, an ``asyncio.wait_for`` (in Python
3.11 a new task plus a timer, for the keepalive timeout) and a new task for the packet's handler. At a
few thousand readings a second that is a large share of the broker's CPU (profiled: ~15 % of the main
thread under a flat-out QoS 1 load). This loop keeps amqtt's behaviour and differs only in:

* **Silence** is detected by one timer per connection that checks the time of the last packet, instead
  of a timeout around every read; it calls ``handle_read_timeout`` as amqtt does (our silence closer).
* **A protocol violation** (a malformed packet, a second CONNECT, a PUBLISH to a wildcard or ``$`` topic)
  closes the connection, as MQTT requires; amqtt discarded the packet and read on. So does a packet whose
  remaining length is over ``max_packet``, before its body is read.
* **A packet's fixed header, and a PUBLISH whole**, are read with one ``readexactly`` each (two or three
  for the header) and parsed from those bytes; amqtt read every field with a call of its own through
  its reader adapter (about eight reads and a dozen coroutines a PUBLISH: ~30 % of this loop's time
  under a flat-out load). The packet handed on is amqtt's own ``PublishPacket``. Its topic must be UTF-8
  and its body hold its topic and packet id, or it is a protocol violation (amqtt read past the packet
  into the next one when the body was too short, and turned a topic that is not UTF-8 into "b'...'").
* **PUBLISH at QoS 0/1, PUBACK and PINGREQ** are handled inline, in arrival order: none of them waits
  for another packet from the same client (QoS 1: queue the message, send PUBACK). A client whose
  socket stops taking our PUBACKs then stops being read, which is the back-pressure we want. Every
  other packet (QoS 2 flows wait for PUBREL, SUBSCRIBE replays retained messages, ...) still gets its
  own task, as in amqtt.

Pinned to amqtt 0.12 (it calls the handler's own methods and private fields, listed in __init__.py and
checked at start by compat.py); the broker guard tests run every packet path through it.
"""

from __future__ import annotations

import asyncio
from asyncio import IncompleteReadError
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from amqtt.errors import MQTTError, NoDataError
from amqtt.events import MQTTEvents
from amqtt.mqtt import packet_class
from amqtt.mqtt.constants import QOS_2
from amqtt.mqtt.packet import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RESERVED_0,
    RESERVED_15,
    SUBACK,
    SUBSCRIBE,
    UNSUBACK,
    UNSUBSCRIBE,
    MQTTFixedHeader,
)
from amqtt.mqtt.publish import PublishPacket, PublishPayload, PublishVariableHeader

from gateway.core.throttle import LogThrottle

log = structlog.get_logger(__name__)

_TASK_HANDLERS = {
    SUBSCRIBE: "handle_subscribe",
    UNSUBSCRIBE: "handle_unsubscribe",
    SUBACK: "handle_suback",
    UNSUBACK: "handle_unsuback",
    PUBREC: "handle_pubrec",
    PUBREL: "handle_pubrel",
    PUBCOMP: "handle_pubcomp",
    DISCONNECT: "handle_disconnect",
}


class _SilenceWatch:
    """Calls `on_silence` once no packet arrived for `timeout` seconds; `seen()` is one float store."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, on_silence: Any) -> None:
        self._loop = loop
        self._timeout = timeout
        self._on_silence = on_silence
        self.last = loop.time()
        self._timer: asyncio.TimerHandle | None = loop.call_at(self.last + timeout, self._check)

    def seen(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        due = self.last + self._timeout
        if self._loop.time() >= due:
            self._timer = None
            self._on_silence()
        else:
            self._timer = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_failures = LogThrottle()


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """A handler task whose error is always retrieved: asyncio logs a traceback for each one that is not (a
    flood of QoS 2 publishes cut off by their connection's end wrote one per packet)."""
    task = asyncio.create_task(coro)
    task.add_done_callback(_handler_done)
    return task


def _handler_done(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is None or isinstance(error.__cause__, asyncio.CancelledError):
        return  # ended by the connection's end while it sent (amqtt's ProtocolHandlerError)
    if (left_out := _failures.allow(type(error).__name__)) is not None:
        log.warning("broker.handler_failed", error=repr(error), left_out_since_last=left_out)


_CLOSED = (IncompleteReadError, ConnectionResetError, BrokenPipeError)  # amqtt's "no data": the connection ended
_MAX_MULTIPLIER = 128**3  # a remaining length has at most four bytes


async def read_fixed_header(stream: asyncio.StreamReader) -> MQTTFixedHeader | None:
    """The next packet's fixed header, or None once the connection has ended (amqtt's from_stream, fewer reads)."""
    try:
        head = await stream.readexactly(2)
        length = head[1] & 0x7F
        if head[1] & 0x80:
            multiplier = 128
            while True:
                byte = (await stream.readexactly(1))[0]
                length += (byte & 0x7F) * multiplier
                if not byte & 0x80:
                    break
                multiplier *= 128
                if multiplier > _MAX_MULTIPLIER:
                    raise MQTTError(f"invalid remaining length bytes, packet type {head[0] >> 4}")
    except _CLOSED:
        return None
    return MQTTFixedHeader(head[0] >> 4, head[0] & 0x0F, length)


def publish_packet(fixed_header: MQTTFixedHeader, body: bytes) -> PublishPacket:
    """amqtt's PublishPacket from a PUBLISH's body: topic, packet id (QoS 1 and 2), payload."""
    end = 2 + int.from_bytes(body[:2], "big")
    qos = (fixed_header.flags >> 1) & 0x03
    payload_at = end + 2 if qos else end
    if len(body) < payload_at:
        raise MQTTError(f"a PUBLISH of {len(body)} bytes is shorter than its topic and packet id")
    raw_topic = body[2:end]
    try:
        topic = raw_topic.decode("utf-8")
    except UnicodeDecodeError:
        raise MQTTError("[MQTT-1.5.3-1] a PUBLISH topic that is not UTF-8") from None
    packet_id = int.from_bytes(body[end:payload_at], "big") if qos else None
    return PublishPacket(fixed_header, PublishVariableHeader(topic, packet_id), PublishPayload(body[payload_at:]))


def install(handler: Any, on_protocol_error: Callable[[MQTTError], None], *, max_packet: int) -> None:
    """Make `handler.start()` run our loop instead of amqtt's (call before start())."""

    async def reader_loop() -> None:
        await _reader_loop(handler, on_protocol_error, max_packet)

    handler._reader_loop = reader_loop


async def _reader_loop(handler: Any, on_protocol_error: Callable[[MQTTError], None], max_packet: int) -> None:
    session = handler.session
    loop = asyncio.get_running_loop()
    # Handler tasks (QoS 2, SUBSCRIBE, ...) not yet done: usually none, so a list (an idle deque costs ~0.7 KB).
    # Finished ones are dropped when it doubles in length, so a QoS 2 burst costs O(1) a packet.
    running: list[asyncio.Task[None]] = []
    trim_at = 8
    keepalive = session.keep_alive if session.keep_alive and session.keep_alive > 0 else None
    watch = _SilenceWatch(loop, keepalive, handler.handle_read_timeout) if keepalive else None
    plugins = handler.plugins_manager
    reader = handler.reader
    stream: asyncio.StreamReader = reader._reader
    handler._reader_ready.set()
    try:
        while True:
            try:
                if len(running) >= trim_at:
                    running[:] = [task for task in running if not task.done()]
                    trim_at = max(8, 2 * len(running))
                fixed_header = await read_fixed_header(stream)
                if fixed_header is None:
                    break  # EOF
                if watch is not None:
                    watch.seen()
                if fixed_header.remaining_length > max_packet:
                    # Refused before its body is read: amqtt read all of it first (a 64 MB PUBLISH took the
                    # daemon's memory from 56 to 123 MB before the payload limit refused it).
                    raise MQTTError(f"packet of {fixed_header.remaining_length} bytes exceeds {max_packet}")
                kind = fixed_header.packet_type
                if kind in (RESERVED_0, RESERVED_15):
                    await handler.handle_connection_closed()
                    continue
                if kind == PUBLISH:
                    try:
                        body = await stream.readexactly(fixed_header.remaining_length)
                    except _CLOSED:
                        break
                    packet = publish_packet(fixed_header, body)
                else:
                    packet = await packet_class(fixed_header).from_stream(reader, fixed_header=fixed_header)
                await plugins.fire_event(MQTTEvents.PACKET_RECEIVED, packet=packet, session=session)
                if kind == PUBLISH:
                    if packet.qos == QOS_2:
                        running.append(_spawn(handler.handle_publish(packet)))
                    else:
                        await handler.handle_publish(packet)
                elif kind == PUBACK:
                    await handler.handle_puback(packet)
                elif kind == PINGREQ:
                    await handler.handle_pingreq(packet)
                elif kind == CONNECT:
                    # amqtt logged an error and read on; MQTT says a second CONNECT ends the connection.
                    raise MQTTError("[MQTT-3.1.0-2] a second CONNECT")
                else:
                    name = _TASK_HANDLERS.get(kind)
                    if name is not None:
                        running.append(_spawn(getattr(handler, name)(packet)))
            except MQTTError as exc:
                # A malformed packet or a forbidden topic. amqtt read on ("Message discarded"), from the
                # middle of the packet when parsing failed (a PUBLISH to a wildcard topic left its payload
                # to be parsed as packets). MQTT says: close the connection [MQTT-4.8.0-1].
                on_protocol_error(exc)
                break
            except asyncio.CancelledError:
                break
            except NoDataError:
                continue
            except Exception:  # amqtt ends the connection on anything else (silently); so do we, loudly
                log.exception("broker.reader_failed", client_id=session.client_id)
                break
    finally:
        if watch is not None:
            watch.cancel()
    for task in running:
        task.cancel()  # amqtt turns a cancel inside a send into ProtocolHandlerError: retrieved by _handler_done
    await handler.handle_connection_closed()
    handler._reader_stopped.set()
    await handler.stop()
