"""The per-connection client loop of the embedded broker, in place of amqtt's `Broker._client_message_loop`.

amqtt's loop waits (asyncio.wait) on four tasks it recreates after each use: the disconnect, the next
SUBSCRIBE, the next UNSUBSCRIBE and the next QoS 2 message. Four idle tasks per connection cost ~5 KB;
here the SUBSCRIBE/UNSUBSCRIBE handlers, the QoS 2 flow (once its message is queued) and the disconnect
future set one Event (`Connection.wake`) instead. Each pass: a disconnect ends the loop (what is still
queued goes to the store as leftovers, as with amqtt); then SUBSCRIBE and UNSUBSCRIBE requests in the
order they came (amqtt took at most one of each per wake-up, subscriptions first, so an UNSUBSCRIBE then
SUBSCRIBE of one topic could end unsubscribed); then QoS 2 messages (QoS 0/1 ones never get here: the
reader delivers them, publish_flow.py). A QoS 2 message to a `$` topic takes the reader's delivery, where the
ACL decides (amqtt refuses every `$` topic).

The work itself is amqtt's: its `_handle_disconnect`, `_handle_subscription`, `_handle_unsubscription`
and `_handle_message_delivery`, each given a finished future holding what its own loop would have awaited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import MQTTError
from amqtt.session import Session

from gateway.broker.amqtt.connection import Connection, transport_of
from gateway.broker.amqtt.slim_waits import slim_event


async def run(
    broker: Broker, conn: Connection, session: Session, protocol_error: Callable[[MQTTError], None]
) -> None:
    handler = conn.handler
    # The handler's reader Events are made in handler.start(), which has returned by now.
    slim_event(handler._reader_ready)
    slim_event(handler._reader_stopped)
    wake = conn.wake
    disconnect = handler._disconnect_waiter  # set by start(); None if the connection already ended
    if disconnect is None:
        disconnect = _done(None)
    disconnect.add_done_callback(lambda _: wake.set())
    subscriptions = handler._pending_subscriptions
    deliveries = session.delivered_message_queue
    # A first pass before any wait: start() may already have queued work no wake-up announced (a QoS 2
    # message a resumed session completes in amqtt's retry of its deliveries, a request of a SUBSCRIBE
    # read meanwhile), and a takeover past its wait can leave the shared session's queue non-empty.
    wake.set()
    try:
        while True:
            await wake.wait()
            wake.clear()
            if disconnect.done():
                await broker._handle_disconnect(session, handler, disconnect)
                return
            requests = conn.requests
            while requests:
                queue = requests.pop(0)
                if queue.empty():
                    continue  # cleared by handler.stop()
                request = _done(queue.get_nowait())
                if queue is subscriptions:
                    await broker._handle_subscription(session, handler, request)
                else:
                    await broker._handle_unsubscription(session, handler, request)
            while not deliveries.empty():
                message = deliveries.get_nowait()
                if not await _deliver(broker, conn, session, message):
                    # A forbidden topic. amqtt would leave its loop here and the connection open, its Will
                    # unsent and a persistent session marked connected. End it as an abnormal disconnect:
                    # the next pass sees it (Will, handler stopped, session disconnected); what is still
                    # queued goes to the store as leftovers.
                    protocol_error(MQTTError(f"PUBLISH to the topic {message.topic!r}"))
                    transport_of(conn.writer).abort()
                    await handler.handle_connection_closed()
                    break
    except asyncio.CancelledError:
        return  # as amqtt's loop does: the broker is shutting down


async def _deliver(broker: Broker, conn: Connection, session: Session, message: Any) -> bool:
    """A QoS 2 message, complete: delivered (False: its topic is forbidden). amqtt refuses every `$` topic;
    ours are the ACL's to allow (routing.py: `_deliver_read`, which QoS 0/1 messages take from the reader)."""
    if message is not None and (message.topic or "").startswith("$"):
        try:
            await broker._deliver_read(conn, message)  # type: ignore[attr-defined]
        except MQTTError:
            return False
        return True
    return bool(await broker._handle_message_delivery(session, conn.handler, _done(message)))


def _done(value: Any) -> asyncio.Future[Any]:
    """A finished future: amqtt's _handle_* methods take the waiter their loop got the value from."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future
