"""amqtt's Broker with our ACL, ingest hook and retained-message rules: what a verified connection's
messages may do, and where they go (faults 1 and 3 of guarded.py's list are fixed here).

GuardedBroker (guarded.py) builds on this with logins, takeovers and the life of each connection; it
registers every verified connection in `_current`, which is how a message's session is mapped to the
device that logged in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import structlog
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import MQTTError
from amqtt.events import BrokerEvents
from amqtt.mqtt.constants import QOS_0, QOS_2
from amqtt.session import IncomingApplicationMessage, Session

from gateway.broker.acl import DEVICE_TOPICS, Access, client_may
from gateway.broker.amqtt.connection import Connection
from gateway.broker.amqtt.publish_flow import StoredAckMessage
from gateway.core.metrics import Metrics
from gateway.core.ports import BrokerSink
from gateway.core.throttle import LogThrottle

log = structlog.get_logger(__name__)

_ACCESS = {Action.PUBLISH: Access.PUBLISH, Action.SUBSCRIBE: Access.SUBSCRIBE, Action.RECEIVE: Access.RECEIVE}


class RoutingBroker(Broker):  # type: ignore[misc]
    """What messages of verified connections may do and where they go (the base of GuardedBroker)."""

    def __init__(self, config: dict[str, Any], *, sink: BrokerSink, metrics: Metrics) -> None:
        super().__init__(config)
        self._sink = sink
        self._metrics = metrics
        self._current: dict[int, Connection] = {}  # id(session) -> the (newest) connection using that session
        self._throttle = LogThrottle()  # log lines of events that can come in floods (core/throttle.py)
        self.offline_queue = 100  # QoS 1/2 messages kept per offline persistent session (broker.offline_queue)
        self.open_acl = False  # broker.acl = "open": topics outside device/ are free (acl.client_may)

    def _may(self, device_id: str, access: Access, topic: str) -> bool:
        return client_may(device_id, access, topic, open_acl=self.open_acl)

    def device_of(self, session: Session | None) -> str | None:
        """The device a session's current connection logged in as (None: not connected, or never verified)."""
        conn = None if session is None else self._current.get(id(session))
        return None if conn is None else conn.device_id

    # --- ACL ------------------------------------------------------------------------------------

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        device_id = self.device_of(session)
        if device_id is None and action is Action.RECEIVE:
            device_id = self._offline_device(session)
        if device_id is not None and self._may(device_id, _ACCESS[action], topic):
            return True
        self._metrics.inc(
            "gateway_broker_acl_denied_total", 1, "refused publish/subscribe/receive", action=action.value
        )
        # RECEIVE refusals are routine filtering, not an offence; the others once a minute per action with a count
        if action is not Action.RECEIVE and (left_out := self._throttle.allow(("acl", action))) is not None:
            log.warning("broker.acl_denied", device_id=device_id, client_id=session.client_id, action=action.value,
                        topic=topic, left_out_since_last=left_out)
        return False

    def _offline_device(self, session: Session) -> str | None:
        """The device of a persistent session whose device is offline: a QoS 1 message for it is queued
        (amqtt asks RECEIVE first, and without a connection there was no device to ask for: nothing was
        queued). Its client id is its device id: only a verified login creates a session, and a login's
        client id must equal its device id (logins.py)."""
        entry = self._sessions.get(session.client_id)
        return session.client_id if entry is not None and entry[0] is session else None

    async def _retain_broadcast_message(self, broadcast: dict[str, Any], qos: int, target_session: Session) -> None:
        """Queue a QoS 1/2 message for an offline persistent session, at most `offline_queue` per session: when
        full, the oldest queued message is dropped (counted) for the new one (for a device's commands the
        newest say what is wanted now; the command service retries what was not acknowledged anyway)."""
        queue = target_session.retained_messages
        while queue.qsize() >= self.offline_queue:
            queue.get_nowait()
            self._metrics.inc("gateway_broker_offline_dropped_total", 1,
                              "messages dropped from a full offline queue (the oldest first)")
            if (left_out := self._throttle.allow("offline-dropped")) is not None:
                log.warning("broker.offline_queue_full", client_id=target_session.client_id,
                            limit=self.offline_queue, left_out_since_last=left_out)
        await super()._retain_broadcast_message(broadcast, qos, target_session)

    # --- ingest hook ----------------------------------------------------------------------------

    async def _deliver_read(self, conn: Connection, message: IncomingApplicationMessage) -> None:
        """A QoS 0/1 message, delivered by the connection's reader as it is read (see publish_flow.py).

        amqtt's `_handle_message_delivery` (events, topic checks, ACL, broadcast, retain) without its
        queue and client loop; its PUBACK is settled here, once the store has the message.
        """
        session = conn.session
        plugins = self.plugins_manager
        await plugins.fire_event(BrokerEvents.MESSAGE_RECEIVED, client_id=session.client_id, message=message)
        topic = message.topic
        if not topic or (topic.startswith("$") and not self._may(conn.device_id, Access.PUBLISH, topic)):
            # [MQTT-4.7.3-1]; `$` topics are the server's unless the ACL gives them (open mode): the reader ends
            # the connection on this. (A wildcard topic already failed to parse.)
            raise MQTTError(f"PUBLISH to the topic {topic!r}, which no client may publish to")
        receipt = None
        if await self._topic_filtering(session, topic, Action.PUBLISH):
            await plugins.fire_event(BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id, message=message)
            receipt, forward = await self._ingest(conn.device_id, topic, message.data)  # (ACL checked above)
            if forward:
                await super()._broadcast_message(session, topic, message.data, message.qos)
            if message.publish_packet is not None and message.publish_packet.retain_flag:
                await self.retain_message(session, topic, message.data, message.qos)
        if isinstance(message, StoredAckMessage) and conn.acks is not None:
            # Its PUBACK once the store has it (None: nothing stored, e.g. an ACL refusal: at once).
            conn.acks.settle(message.ack, receipt)

    async def _ingest(
        self, device_id: str, topic: str, data: bytes | bytearray | None
    ) -> tuple[asyncio.Future[None] | None, bool]:
        """Hand a permitted publish to the sink: (its store receipt, whether an MQTT client subscribes to it).
        Only `device/` topics are the gateway's; others (open ACL) are only routed between clients."""
        receipt = None
        if topic.startswith(DEVICE_TOPICS):
            receipt = await self._sink.message(device_id, topic, bytes(data or b""))
        # Device data usually has no MQTT subscriber: skip amqtt's (unbounded) broadcast queue then.
        return receipt, self._has_subscriber(topic)

    async def _broadcast_message(
        self,
        session: Session | None,
        topic: str | None,
        data: bytes | bytearray | None,
        force_qos: int | None = None,
    ) -> None:
        if session is not None and topic is not None:
            # From amqtt's client loop (QoS 2, after its ACL check) or a Will, which amqtt never checks.
            device_id = self.device_of(session)
            if device_id is None or not self._may(device_id, Access.PUBLISH, topic):
                self._metrics.inc("gateway_broker_acl_denied_total", 1, action="will")
                log.warning("broker.will_denied", device_id=device_id, topic=topic)
                return
            _, forward = await self._ingest(device_id, topic, data)  # no PUBACK waits on these
            if not forward:
                return
        await super()._broadcast_message(session, topic, data, force_qos)

    async def _run_broadcast(self, running_tasks: deque[asyncio.Task[Any]]) -> None:
        """amqtt's (one message from the broadcast queue to each subscriber), delivered at the lower of the
        message's QoS and the subscription's (MQTT 3.1.1, 3.8.4). amqtt delivered at the subscription's QoS
        (a QoS 0 publish reached a QoS 1 subscriber as QoS 1), or at the QoS it was handed whatever the
        subscription (a Will, a command to a device).

        A broadcast's "qos" is the message's QoS: what `_deliver_read` passes, a Will's, a command's (1). Only
        a QoS 2 message from amqtt's own flow comes without one.
        """
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        published = broadcast.get("qos")
        if published is None:
            published = QOS_2
        for topic_filter, subscriptions in self._subscriptions.items():
            if not self._matches(topic, topic_filter):
                continue
            for target, granted in subscriptions:
                qos = granted if granted < published else published
                if not await self._topic_filtering(target, topic, Action.RECEIVE):
                    continue
                if not target.transitions.is_connected():
                    # A persistent session's QoS 1/2 messages wait for it [MQTT-3.1.2-5] (amqtt's rule).
                    if not target.clean_session and qos != QOS_0 and not target.is_anonymous:
                        await self._retain_broadcast_message(broadcast, qos, target)
                    continue
                handler = self._get_handler(target)
                if handler is not None:
                    publish = handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                    running_tasks.append(asyncio.ensure_future(publish))

    def _has_subscriber(self, topic: str) -> bool:
        subs = self._subscriptions
        if subs.get(topic):
            return True
        return any(("#" in f or "+" in f) and s and self._matches(topic, f) for f, s in subs.items())

    # --- fix 1: retained replay only for the session's own, permitted subscriptions -----------------

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Session
    ) -> None:
        topic_filter, qos = subscription
        own = [q for s, q in self._subscriptions.get(topic_filter, ()) if s.client_id == session.client_id]
        if not own:
            return  # amqtt calls this for every filter in the broker on connect: not this client's
        qos = own[0]  # the granted QoS (amqtt passes QoS 0 when it replays on connect)
        # The subscription is registered (new, or a persistent one on reconnect): from now on a message
        # published to it reaches the client, so this is when a device can take commands.
        device_id = self.device_of(session)
        if device_id is not None:
            await self._sink.subscribed(device_id, topic_filter)
        handler = self._get_handler(session)
        if handler is None:
            return
        tasks = []
        for topic, retained in list(self._retained_messages.items()):
            if not retained.data or not self._matches(topic, topic_filter):
                continue
            if not await self._topic_filtering(session, topic, Action.RECEIVE):
                continue
            tasks.append(
                asyncio.ensure_future(
                    handler.mqtt_publish(retained.topic, retained.data, min(qos, retained.qos or qos), retain=True)
                )
            )
        if tasks:
            await asyncio.wait(tasks)

    # --- fix 3: a zero-length retained publish deletes the retained message --------------------------

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        if source_session is not None and topic_name is not None:
            # amqtt stores a retained Will here without any ACL check: a device could plant a retained
            # command for another device (or delete someone's retained message with an empty Will).
            device_id = self.device_of(source_session)
            if device_id is None or not self._may(device_id, Access.PUBLISH, topic_name):
                self._metrics.inc("gateway_broker_acl_denied_total", 1, action="retain")
                log.warning("broker.retain_denied", client_id=source_session.client_id, topic=topic_name)
                return
        if topic_name is not None and not data:
            self._retained_messages.pop(topic_name, None)  # [MQTT-3.3.1-10]
            return
        await super().retain_message(source_session, topic_name, data, qos)

    async def _deliver_leftovers(self, conn: Connection) -> None:
        """Hand over messages parsed but never delivered by the client loop.

        amqtt ends a client's loop at DISCONNECT (or a lost connection) and leaves what is still in
        the delivery queue there: a sensor that publishes and disconnects at once would lose them
        (its QoS 0 messages, and QoS 1 ones it may not send again). Stored at least once, never lost.
        """
        device_id = conn.device_id
        queue = conn.session.delivered_message_queue
        held = [] if conn.intake is None else conn.intake.undelivered
        while held or not queue.empty():
            message = held.pop(0) if held else queue.get_nowait()
            if message is None or not message.topic or not self._may(device_id, Access.PUBLISH, message.topic):
                continue
            if not message.topic.startswith(DEVICE_TOPICS):
                continue  # not the gateway's (open ACL): nothing to store
            self._metrics.inc("gateway_broker_leftovers_delivered_total", 1, "parsed messages amqtt left behind")
            await self._sink.message(device_id, message.topic, bytes(message.data or b""))

