"""One verified device connection on the embedded broker, and the handler methods swapped in for it.

amqtt's BrokerProtocolHandler reads and answers one connection. For a connection whose login we
verified, `attach` replaces some of its methods on that handler instance (never on the class): the
PUBLISH intake (publish_flow.py), SUBSCRIBE/UNSUBSCRIBE (to wake our client loop), stop (to let a
delivery end first), the read timeout (silence: the Will fires) and the reader loop (reader_loop.py).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from amqtt.errors import MQTTError
from amqtt.session import OUTGOING, IncomingApplicationMessage, Session

from gateway.broker.amqtt import reader_loop
from gateway.broker.amqtt.publish_flow import PublishIntake, StoredAcks
from gateway.broker.amqtt.slim_waits import new_event, slim_queue

# How long a closing connection's reader may take to end the delivery it is in (only a full store makes
# it wait at all) before it is cancelled regardless.
DELIVERY_FINISH_WAIT = 2.0


@dataclass(eq=False)
class Connection:
    """One accepted network connection, from its verified login until its client loop ended.

    Not keyed by the Session: amqtt hands the same Session to every connection of a persistent session.
    """

    device_id: str
    handler: Any  # amqtt's BrokerProtocolHandler
    reader: Any  # amqtt's StreamReaderAdapter/StreamWriterAdapter: held here because amqtt attaches them to
    writer: Any  # the handler only after our checks, and a takeover or shutdown may need to abort before that
    session: Session
    intake: PublishIntake | None = None
    acks: StoredAcks | None = None
    ended: asyncio.Event = field(default_factory=new_event)
    wake: asyncio.Event = field(default_factory=new_event)  # work for the client loop (client_loop.py)
    # The handler's queue each SUBSCRIBE/UNSUBSCRIBE request went into, in arrival order.
    requests: list[asyncio.Queue[Any]] = field(default_factory=list)

    def abort(self) -> None:
        """Drop the socket at once: nothing more is read, and no close waits on the peer."""
        transport = transport_of(self.writer)
        if not transport.is_closing():
            transport.abort()

    async def acknowledge_and_close(self, timeout: float) -> None:
        """A graceful stop: read nothing more, let the delivery in progress end, send the PUBACK of every message
        the store commits meanwhile (bounded by `timeout`), then drop the socket."""
        transport = transport_of(self.writer)
        if not transport.is_closing():
            transport.pause_reading()
        self.drop_unread()  # parsed never: not acknowledged, so sent again after the restart
        try:
            async with asyncio.timeout(timeout):
                if self.intake is not None:
                    await self.intake.finish(timeout)
                if self.acks is not None:
                    await self.acks.all_sent()
        except TimeoutError:
            pass  # the store is slow: what it has not committed by now is sent again by the device
        if transport.get_write_buffer_size() and not transport.is_closing():
            transport.close()  # PUBACKs the peer has not taken yet: flushed first (abort would drop them)
        else:
            self.abort()

    def drop_unread(self) -> None:
        """Forget bytes received but not parsed yet (never acknowledged: QoS 1 devices send them again)."""
        self.reader._reader._buffer.clear()  # amqtt's StreamReaderAdapter around asyncio's StreamReader


def transport_of(writer: Any) -> asyncio.Transport:
    """The asyncio transport under amqtt's StreamWriterAdapter (the adapter of every TCP listener)."""
    transport: asyncio.Transport = writer._writer.transport
    return transport


def attach(
    conn: Connection,
    *,
    deliver: Callable[[Connection, IncomingApplicationMessage], Awaitable[None]],
    silence_closer: Callable[[], None] | None,
    protocol_error: Callable[[MQTTError], None],
    max_packet: int,
) -> None:
    """Swap our methods into the connection's handler (before handler.start()); see the module.

    `silence_closer`: called when the client sent nothing for its keepalive (None: keepalive 0).
    """
    handler, session = conn.handler, conn.session
    _slim_connection_state(handler, session)
    conn.acks = StoredAcks(transport_of(conn.writer))
    conn.intake = PublishIntake(
        handler, conn.acks, functools.partial(deliver, conn), qos2_queued=conn.wake.set
    )
    handler.handle_publish = conn.intake
    handler.handle_subscribe = functools.partial(
        _request, handler.handle_subscribe, conn, handler._pending_subscriptions
    )
    handler.handle_unsubscribe = functools.partial(
        _request, handler.handle_unsubscribe, conn, handler._pending_unsubscriptions
    )
    handler.stop = functools.partial(_stop_after_delivery, conn, handler.stop)
    for name in ("_handle_qos1_message_flow", "_handle_qos2_message_flow"):
        setattr(handler, name, functools.partial(_keep_unacknowledged, getattr(handler, name), session))
    if silence_closer is not None:
        # The handler's reader calls handle_read_timeout() after the keepalive, which amqtt leaves empty.
        handler.handle_read_timeout = silence_closer
    # amqtt's loop costs a task and a timer per packet, and reads on after a protocol violation (see the module)
    reader_loop.install(handler, protocol_error, max_packet=max_packet)


async def _request(
    step: Callable[[Any], Awaitable[None]], conn: Connection, queue: asyncio.Queue[Any], packet: Any
) -> None:
    """amqtt's SUBSCRIBE/UNSUBSCRIBE handler (it puts the request into `queue`), then note its turn and wake
    the client loop."""
    await step(packet)
    conn.requests.append(queue)
    conn.wake.set()


async def _stop_after_delivery(conn: Connection, stop: Callable[[], Awaitable[None]]) -> None:
    """amqtt's handler.stop() cancels the reader: first let it end the delivery it is in (bounded)."""
    if conn.intake is not None:
        await conn.intake.finish(DELIVERY_FINISH_WAIT)
    await stop()


async def _keep_unacknowledged(
    flow: Callable[[Any], Awaitable[None]], session: Session, app_message: Any
) -> None:
    """amqtt's QoS 1 and 2 flows, but a message we sent whose exchange did not complete (no PUBACK, no PUBCOMP)
    stays in the session's in-flight messages: a persistent session's next connection sends it again, with
    DUP, or its PUBREL (amqtt's start() retries what is in flight [MQTT-4.4.0-1]). amqtt removed it when the
    connection ended or an answer took over 5 s."""
    try:
        await flow(app_message)
    finally:
        done = app_message.puback_packet if app_message.qos == 1 else app_message.pubcomp_packet
        if app_message.direction == OUTGOING and done is None and not session.clean_session:
            session.inflight_out[app_message.packet_id] = app_message


def _slim_connection_state(handler: Any, session: Session) -> None:
    """amqtt's per-connection Queues and Events, with waiter lists that cost nothing while empty (slim_waits.py)."""
    slim_queue(handler._pending_subscriptions, items=True)  # one item per SUBSCRIBE packet, taken at once
    slim_queue(handler._pending_unsubscriptions, items=True)
    slim_queue(session.delivered_message_queue)  # a resumed session's are already slim: a no-op then
    slim_queue(session.retained_messages)
