"""amqtt's Broker with our authentication, ACL and ingest hook, and fixes for five of its faults.

amqtt 0.12 (pinned: these override private methods, and tests/integration/test_broker_guards.py and
test_broker_sessions.py fail if a fault comes back):

1. Retained leak: on connect it replays retained messages for *every* subscription filter in the
   broker, not only the client's, and skips the RECEIVE check. We replay only the session's own
   filters and check RECEIVE per message.
2. Silent clients: a client that stops sending (power or Wi-Fi lost without a TCP close) is never
   dropped after 1.5 x keepalive, so its Will never fires. We close it and publish its Will.
3. A zero-length retained publish does not remove the retained message in every path. We delete it
   ourselves and never replay an empty one.
4. Session takeover before authentication: amqtt looks up the session of the CONNECT's client id
   (wiping it with clean_session=1, reusing it and overwriting its Will and credentials with
   clean_session=0, kicking the client connected with it) *before* it checks the password. We check
   credentials, and that the client id is the device's own id, before any session is touched.
5. One Session object serves every connection of a persistent session, so bookkeeping keyed by the
   session let an old connection's cleanup remove the new one's identity and publish intake. Ours is kept
   per connection (`_Connection`).

Authentication and the ACL are plain method overrides instead of amqtt plugins: plugins are
configured by import path (no way to hand them our device table) and each call costs a task.

A connection also costs less memory than amqtt's (~19 KB instead of ~35 KB, measured with
tracemalloc; 100 purifiers stay connected all day): its client loop runs without amqtt's four waiter
tasks (`_client_message_loop`), and its Queues and Events have empty waiter lists (slim_waits.py).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn

import structlog
from amqtt.broker import Broker
from amqtt.contexts import Action, ListenerConfig
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import IncomingApplicationMessage, Session

from gateway import malloc_tuning
from gateway.broker import reader_loop, session_states
from gateway.broker.acl import Access, device_may
from gateway.broker.publish_flow import PublishIntake, StoredAckMessage, StoredAcks
from gateway.broker.slim_waits import new_event, slim_event, slim_queue
from gateway.core.metrics import Metrics
from gateway.core.passwords import verify_password, warm_up
from gateway.core.ports import BrokerSink

log = structlog.get_logger(__name__)

_ACCESS = {Action.PUBLISH: Access.PUBLISH, Action.SUBSCRIBE: Access.SUBSCRIBE, Action.RECEIVE: Access.RECEIVE}

# How long a new login waits for the connection it replaces to end (Will published, acknowledged messages
# handed over) before it goes on regardless; that connection's socket is already aborted by then.
_TAKEOVER_WAIT = 5.0
# How long a closing connection's reader may take to end the delivery it is in (only a full store makes
# it wait at all) before it is cancelled regardless.
_DELIVERY_FINISH_WAIT = 2.0

# Session fields a CONNECT brings along when it resumes a persistent session. amqtt copies all but
# will_retain and the peer's address/TLS object, so a resumed session kept the first connection's values.
_RESUMED_FIELDS = (
    "will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
    "username", "password", "remote_address", "remote_port", "ssl_object",
)


class DeviceTable:
    """Device id -> argon2 hash (None: may log in without a password when anonymous access is on)."""

    def __init__(self, hashes: dict[str, str | None], *, allow_anonymous: bool) -> None:
        self.hashes = hashes
        self.allow_anonymous = allow_anonymous


@dataclass(eq=False)
class _Connection:
    """One accepted network connection, from its verified login until its client loop ended.

    Not keyed by the Session: amqtt hands the same Session to every connection of a persistent session.
    """

    device_id: str
    handler: Any  # amqtt's BrokerProtocolHandler
    reader: Any  # amqtt's ReaderAdapter/WriterAdapter: held here because amqtt attaches them to the
    writer: Any  # handler only after our checks, and a takeover or shutdown may need to abort before that
    session: Session
    intake: PublishIntake | None = None
    acks: StoredAcks | None = None
    ended: asyncio.Event = field(default_factory=new_event)
    wake: asyncio.Event = field(default_factory=new_event)  # work for the client loop (_client_message_loop)
    # The handler's queue each SUBSCRIBE/UNSUBSCRIBE request went into, in arrival order.
    requests: list[asyncio.Queue[Any]] = field(default_factory=list)


class GuardedBroker(Broker):  # type: ignore[misc]
    def __init__(
        self,
        config: dict[str, Any],
        *,
        devices: DeviceTable,
        sink: BrokerSink,
        metrics: Metrics,
        keepalive_grace: float = 1.5,
        require_client_cert: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(config)
        session_states.install()  # a transitions.Machine per session was 2/3 of its memory (see module)
        warm_up()  # before any login is verified in a worker thread
        # argon2 needs its memory cost (64 MiB by default) per check in flight: with the default executor's
        # 6 threads, 100 purifiers reconnecting at once took RSS to ~440 MB. Two threads keep the peak near
        # 180 MB, and on a 2-core board more threads would not check faster anyway.
        self._password_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="argon2")
        self.devices = devices  # replaced whole on config reload
        self._sink = sink
        self._metrics = metrics
        self._grace = keepalive_grace
        self._require_client_cert = require_client_cert
        self._connections: dict[int, _Connection] = {}  # id(handler) -> accepted connection, until its loop ended
        self._current: dict[int, _Connection] = {}  # id(session) -> the (newest) connection using that session
        self._live: dict[str, int] = {}  # device id -> open connections (a takeover briefly has two)
        self._closing = False
        self._client_loops = 0  # _handle_client_session calls still running
        self._no_client_loops = asyncio.Event()
        self._no_client_loops.set()
        self._silence_tasks: set[asyncio.Future[None]] = set()
        self._verifying = 0  # password checks in flight

    def close_password_pool(self) -> None:
        self._password_pool.shutdown(wait=False, cancel_futures=True)

    # --- authentication: before amqtt touches any session -------------------------------------------

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Session]:
        """Read the CONNECT, verify it, end the device's previous connection, then find its session.

        Replaces amqtt's version, which looks up (and wipes, reuses or takes over) the session of the
        client id before `_authenticate` runs: a wrong password could disconnect a device, delete its
        subscriptions, or overwrite its Will. A refusal raises, so amqtt never gets to the session.
        """
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()  # a malformed CONNECT (amqtt already sent the CONNACK where one applies)
            raise
        except NoDataError as exc:
            raise AMQTTError(exc) from exc
        device_id, reason = (None, "shutting-down") if self._closing else await self._check_credentials(incoming)
        if device_id is None:
            await self._refuse(incoming, writer, reason)
        # Counted as live before the connection it replaces ends, so a takeover does not flap offline/online.
        self._live[device_id] = self._live.get(device_id, 0) + 1
        try:
            await self._end_connections_of(device_id, keep=None)
            session = await self._find_session(incoming)
            if self._closing:  # began while we waited: stop_intake will not see this connection
                await self._refuse(incoming, writer, "shutting-down")
        except BaseException:
            await self._release(device_id)
            raise
        # No await from here on: stop_intake must find the connection registered, or _closing set above.
        _slim_connection_state(handler, session)
        conn = _Connection(device_id, handler, reader, writer, session)
        self._connections[id(handler)] = conn
        self._current[id(session)] = conn
        conn.acks = StoredAcks(_transport(writer))
        conn.intake = PublishIntake(
            handler, conn.acks, functools.partial(self._deliver_read, conn), qos2_queued=conn.wake.set
        )
        handler.handle_publish = conn.intake
        handler.handle_subscribe = functools.partial(
            _request, handler.handle_subscribe, conn, handler._pending_subscriptions
        )
        handler.handle_unsubscribe = functools.partial(
            _request, handler.handle_unsubscribe, conn, handler._pending_unsubscriptions
        )
        handler.stop = functools.partial(self._stop_handler_after_delivery, conn, handler.stop)
        if session.keep_alive > 0:
            # The handler's reader waits this long for the next packet, then calls handle_read_timeout(),
            # which amqtt leaves empty. Ours closes the connection as abnormal, so the Will is published.
            session.keep_alive = session.keep_alive * self._grace
            handler.handle_read_timeout = self._silence_closer(handler, session)
        # amqtt's loop costs a task and a timer per packet, and reads on after a protocol violation (see the module)
        reader_loop.install(handler, functools.partial(self._protocol_error, device_id))
        return handler, session

    async def _check_credentials(self, session: Session) -> tuple[str | None, str]:
        table = self.devices
        username: str | None = session.username
        client_id: str | None = session.client_id
        if username is None:
            # Anonymous: only a configured device naming itself by client id, and only if allowed...
            # ...and only one configured without a password: anonymous mode must not bypass a password.
            if table.allow_anonymous and client_id in table.hashes and table.hashes[client_id] is None:
                return client_id, ""
            return None, "anonymous"
        if username not in table.hashes:
            return None, "unknown-device"
        if client_id != username:
            # The client id names the session a CONNECT resumes or takes over: only the device's own.
            return None, "client-id-of-another-device" if client_id in table.hashes else "client-id-not-username"
        password_hash = table.hashes[username]
        if password_hash is None:
            return (username, "") if table.allow_anonymous else (None, "no-password-configured")
        password: str | None = session.password
        if password is None:
            return None, "no-password"
        # argon2 costs tens of ms on a Pi: keep it off the event loop.
        loop = asyncio.get_running_loop()
        self._verifying += 1
        try:
            ok = await loop.run_in_executor(self._password_pool, verify_password, password_hash, password)
        finally:
            self._verifying -= 1
            if self._verifying == 0:
                # Each check allocates argon2's memory cost; after a login storm (a power cut brings back
                # every purifier at once) hand the freed heap back now, not at the next periodic trim
                # (a trim costs well under a millisecond).
                malloc_tuning.trim()
        if ok:
            return username, ""
        return None, "bad-password"

    async def _refuse(self, session: Session, writer: Any, reason: str) -> NoReturn:
        """Count and log a refused login, answer it with a CONNACK code, close, and end amqtt's handling."""
        self._metrics.inc("gateway_broker_logins_refused_total", 1, "refused MQTT logins", reason=reason)
        log.warning(
            "broker.login_refused",
            client_id=session.client_id,
            username=session.username,
            reason=reason,
            remote=session.remote_address,
        )
        # One code, 5 "not authorized", for every refusal (as Mosquitto does): with 4 "bad user name or
        # password" for some reasons and 5 for others, the answer would tell which device ids exist.
        # session_parent 0: nothing of a session is revealed to a refused client [MQTT-3.2.2-4].
        connack = ConnackPacket.build(0, NOT_AUTHORIZED)
        try:
            await asyncio.wait_for(connack.to_stream(writer), 5)
            await asyncio.wait_for(writer.close(), 5)
        except (OSError, TimeoutError):
            transport = _transport(writer)
            if transport is not None:
                transport.abort()
        # amqtt's _client_connected catches this, releases the listener slot and forgets the connection.
        raise MQTTError(f"login refused: {reason}")

    async def _end_connections_of(self, device_id: str, *, keep: _Connection | None) -> None:
        """Take over: end the device's other connections and wait until each has wound down.

        Done before the session lookup, so the old connection publishes its own Will and hands over
        what it acknowledged first. amqtt kicks the old client only when the session is resumed
        (clean_session=0), and its teardown then ran after the new connection was up and marked the
        shared session disconnected: commands no longer reached the new connection. With clean_session=1
        amqtt deleted the session and its queue (acknowledged readings included) and left the old
        connection open beside the new one.
        """
        old = [c for c in self._connections.values() if c.device_id == device_id and c is not keep]
        for conn in old:
            log.info("broker.takeover", device_id=device_id, remote=conn.session.remote_address)
            transport = _transport(conn.writer)
            if transport is not None and not transport.is_closing():
                transport.abort()  # nothing more is read from a replaced connection, and no close waits on it
            await conn.handler.handle_connection_closed()
        if old:
            try:
                await asyncio.wait_for(asyncio.gather(*(c.ended.wait() for c in old)), _TAKEOVER_WAIT)
            except TimeoutError:
                log.warning("broker.takeover_slow", device_id=device_id, waited=_TAKEOVER_WAIT)

    async def _find_session(self, incoming: Session) -> Session:
        """amqtt's session lookup (from its _initialize_client_session), run only after the checks above."""
        client_id = incoming.client_id  # a configured device id: never empty, so never generated here
        if incoming.clean_session:
            await self._delete_session(client_id)
            incoming.parent = 0
            session = incoming
        elif client_id in self._sessions:
            session = self._sessions[client_id][0]
            for name in _RESUMED_FIELDS:
                setattr(session, name, getattr(incoming, name))
            session.parent = 1
        else:
            incoming.parent = 0
            session = incoming
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return session

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        # amqtt asks this after its session lookup; the credentials were checked before it, in
        # _initialize_client_session. Here we only confirm this session came through that check.
        if self._current.get(id(session)) is not None:
            return True
        self._metrics.inc("gateway_broker_logins_refused_total", 1, "refused MQTT logins", reason="unverified")
        log.error("broker.login_unverified", client_id=session.client_id)
        return False

    async def _handle_client_session(
        self, reader: Any, writer: Any, client_session: Session, handler: Any, server: Any, listener_name: str
    ) -> None:
        conn = self._connections.get(id(handler))
        self._client_loops += 1
        self._no_client_loops.clear()
        try:
            if conn is not None:
                # A login that raced this one for the same device may have registered meanwhile.
                await self._end_connections_of(conn.device_id, keep=conn)
                self._metrics.inc("gateway_broker_logins_total", 1, "accepted MQTT logins")
                await self._sink.connection(conn.device_id, True)
            await super()._handle_client_session(reader, writer, client_session, handler, server, listener_name)
        finally:
            try:
                if conn is not None:
                    await self._connection_ended(conn)
                else:
                    # Refused by _authenticate: amqtt registers the session before it refuses it; no zombie.
                    current = self._sessions.get(client_session.client_id)
                    if current is not None and current[1] is handler:
                        del self._sessions[client_session.client_id]
            finally:
                # Only now: stop_intake waits for this, and the store closes after it, so the leftovers
                # handed over above must have reached the sink by then.
                self._client_loops -= 1
                if self._client_loops == 0:
                    self._no_client_loops.set()

    async def _client_message_loop(self, client_session: Session, handler: Any) -> None:
        """amqtt's client loop without its four waiter tasks: whatever has work for it sets `conn.wake`.

        amqtt's loop waits (asyncio.wait) on four tasks it recreates after each use: the disconnect, the
        next SUBSCRIBE, the next UNSUBSCRIBE and the next QoS 2 message. Four idle tasks per connection
        cost ~5 KB; here the SUBSCRIBE/UNSUBSCRIBE handlers, the QoS 2 flow (once its message is queued)
        and the disconnect future set one Event instead. Each pass: a disconnect ends the loop (what is
        still queued goes to the store as leftovers, as with amqtt); then SUBSCRIBE and UNSUBSCRIBE requests
        in the order they came (amqtt took at most one of each per wake-up, subscriptions first, so an
        UNSUBSCRIBE then SUBSCRIBE of one topic could end unsubscribed); then QoS 2 messages.
        """
        # The handler's reader Events are made in handler.start(), which has returned by now.
        slim_event(handler._reader_ready)
        slim_event(handler._reader_stopped)
        conn = self._connections.get(id(handler))
        if conn is None:  # not a verified connection: amqtt refuses those before its loop, so never here
            return
        wake = conn.wake
        disconnect = handler._disconnect_waiter  # set by start(); None if the connection already ended
        if disconnect is None:
            disconnect = _done(None)
        disconnect.add_done_callback(lambda _: wake.set())
        subscriptions = handler._pending_subscriptions
        deliveries = client_session.delivered_message_queue
        # A first pass before any wait: start() may already have queued work no wake-up announced (a QoS 2
        # message a resumed session completes in amqtt's retry of its deliveries, a request of a SUBSCRIBE
        # read meanwhile), and a takeover past its wait can leave the shared session's queue non-empty.
        wake.set()
        try:
            while True:
                await wake.wait()
                wake.clear()
                if disconnect.done():
                    await self._handle_disconnect(client_session, handler, disconnect)
                    return
                requests = conn.requests
                while requests:
                    queue = requests.pop(0)
                    if queue.empty():
                        continue  # cleared by handler.stop()
                    request = _done(queue.get_nowait())
                    if queue is subscriptions:
                        await self._handle_subscription(client_session, handler, request)
                    else:
                        await self._handle_unsubscription(client_session, handler, request)
                while not deliveries.empty():
                    message = deliveries.get_nowait()
                    if not await self._handle_message_delivery(client_session, handler, _done(message)):
                        # A forbidden topic. amqtt would leave its loop here and the connection open, its Will
                        # unsent and a persistent session marked connected. End it as an abnormal disconnect:
                        # the next pass sees it (Will, handler stopped, session disconnected); what is still
                        # queued goes to the store as leftovers.
                        self._protocol_error(conn.device_id, MQTTError(f"PUBLISH to the topic {message.topic!r}"))
                        transport = _transport(conn.writer)
                        if transport is not None:
                            transport.abort()
                        await handler.handle_connection_closed()
                        break
        except asyncio.CancelledError:
            return  # as amqtt's loop does: the broker is shutting down

    async def _connection_ended(self, conn: _Connection) -> None:
        try:
            self._connections.pop(id(conn.handler), None)
            if self._current.get(id(conn.session)) is conn:  # not if a newer connection resumed the session
                del self._current[id(conn.session)]
            await self._deliver_leftovers(conn)
            await self._release(conn.device_id)
        finally:
            conn.ended.set()

    async def _release(self, device_id: str) -> None:
        left = self._live.get(device_id, 1) - 1
        if left > 0:
            self._live[device_id] = left
            return
        self._live.pop(device_id, None)
        await self._sink.connection(device_id, False)

    def device_of(self, session: Session | None) -> str | None:
        """The device a session's current connection logged in as (None: not connected, or never verified)."""
        conn = None if session is None else self._current.get(id(session))
        return None if conn is None else conn.device_id

    # --- ACL ------------------------------------------------------------------------------------

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        device_id = self.device_of(session)
        if device_id is not None and device_may(device_id, _ACCESS[action], topic):
            return True
        self._metrics.inc(
            "gateway_broker_acl_denied_total", 1, "refused publish/subscribe/receive", action=action.value
        )
        if action is not Action.RECEIVE:  # RECEIVE refusals are routine filtering, not an offence
            log.warning("broker.acl_denied", device_id=device_id, client_id=session.client_id, action=action.value,
                        topic=topic)
        return False

    @staticmethod
    async def _stop_handler_after_delivery(conn: _Connection, stop: Callable[[], Awaitable[None]]) -> None:
        """amqtt's handler.stop() cancels the reader: first let it end the delivery it is in (bounded)."""
        if conn.intake is not None:
            await conn.intake.finish(_DELIVERY_FINISH_WAIT)
        await stop()

    def _protocol_error(self, device_id: str, error: MQTTError) -> None:
        self._metrics.inc("gateway_broker_protocol_errors_total", 1, "connections closed for a protocol violation")
        log.warning("broker.protocol_error", device_id=device_id, error=str(error))

    # --- ingest hook ----------------------------------------------------------------------------

    async def _deliver_read(self, conn: _Connection, message: IncomingApplicationMessage) -> None:
        """A QoS 0/1 message, delivered by the connection's reader as it is read (see publish_flow.py).

        amqtt's `_handle_message_delivery` (events, topic checks, ACL, broadcast, retain) without its
        queue and client loop; its PUBACK is settled here, once the store has the message.
        """
        session = conn.session
        plugins = self.plugins_manager
        await plugins.fire_event(BrokerEvents.MESSAGE_RECEIVED, client_id=session.client_id, message=message)
        topic = message.topic
        if not topic or topic.startswith("$"):  # (a wildcard topic already failed to parse)
            # [MQTT-4.7.3-1], [MQTT-4.7.2-1]: the reader ends the connection on this.
            raise MQTTError(f"PUBLISH to the topic {topic!r}, which no client may publish to")
        receipt = None
        if await self._topic_filtering(session, topic, Action.PUBLISH):
            await plugins.fire_event(BrokerEvents.MESSAGE_BROADCAST, client_id=session.client_id, message=message)
            receipt, forward = await self._ingest(conn.device_id, topic, message.data)  # (ACL checked above)
            if forward:
                await super()._broadcast_message(session, topic, message.data)
            if message.publish_packet is not None and message.publish_packet.retain_flag:
                await self.retain_message(session, topic, message.data, message.qos)
        if isinstance(message, StoredAckMessage) and conn.acks is not None:
            # Its PUBACK once the store has it (None: nothing stored, e.g. an ACL refusal: at once).
            conn.acks.settle(message.ack, receipt)

    async def _ingest(
        self, device_id: str, topic: str, data: bytes | bytearray | None
    ) -> tuple[asyncio.Future[None] | None, bool]:
        """Hand a permitted publish to the sink: (its store receipt, whether an MQTT client subscribes to it)."""
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
            if device_id is None or not device_may(device_id, Access.PUBLISH, topic):
                self._metrics.inc("gateway_broker_acl_denied_total", 1, action="will")
                log.warning("broker.will_denied", device_id=device_id, topic=topic)
                return
            _, forward = await self._ingest(device_id, topic, data)  # no PUBACK waits on these
            if not forward:
                return
        await super()._broadcast_message(session, topic, data, force_qos)

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
            if device_id is None or not device_may(device_id, Access.PUBLISH, topic_name):
                self._metrics.inc("gateway_broker_acl_denied_total", 1, action="retain")
                log.warning("broker.retain_denied", client_id=source_session.client_id, topic=topic_name)
                return
        if topic_name is not None and not data:
            self._retained_messages.pop(topic_name, None)  # [MQTT-3.3.1-10]
            return
        await super().retain_message(source_session, topic_name, data, qos)

    # --- fix 2: drop clients silent for longer than keepalive x grace (armed in _initialize_client_session) --

    def _silence_closer(self, handler: Any, session: Session) -> Callable[[], None]:
        def close_silent_client() -> None:
            self._metrics.inc("gateway_broker_silent_clients_total", 1, "clients dropped for silence")
            log.warning("broker.client_silent", client_id=session.client_id, keepalive=session.keep_alive)
            task = asyncio.ensure_future(handler.handle_connection_closed())
            self._silence_tasks.add(task)
            task.add_done_callback(self._silence_tasks.discard)

        return close_silent_client

    # --- TLS: a listener with a CA requires client certificates -------------------------------------

    def _create_ssl_context(self, listener: ListenerConfig) -> ssl.SSLContext:
        ctx: ssl.SSLContext = Broker._create_ssl_context(listener)
        bind = listener.get("bind")
        if bind in self._require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    # --- orderly shutdown ----------------------------------------------------------------------------

    async def stop_intake(self, timeout: float = 3.0) -> None:
        """Accept no new connections or packets, and hand everything already parsed to the sink.

        QoS 1 messages are acknowledged only once stored (publish_flow.py), but QoS 0 messages and
        what a device sent just before it went are in the delivery queues: abort every connection
        (nothing more is read or acknowledged; the readers end normally on the closed socket), let
        each client loop finish what it holds, then deliver what is still queued ourselves.
        """
        self._closing = True
        for server in self._servers.values():
            instance = getattr(server, "instance", None)
            if instance is not None:
                instance.close()
        # Every accepted connection, also one amqtt has not attached to its handler yet.
        for conn in list(self._connections.values()):
            transport = _transport(conn.writer)
            if transport is not None and not transport.is_closing():
                transport.abort()
            # Bytes received but not yet parsed were never acknowledged (QoS 1 devices will resend
            # them; QoS 0 promised nothing): drop them instead of parsing a flood on the way out.
            stream = getattr(conn.reader, "_reader", None)  # amqtt's adapter around asyncio's reader
            buffer = getattr(stream, "_buffer", None)
            if isinstance(buffer, bytearray):
                buffer.clear()
        # Each client loop now finishes the message it holds (and publishes its Will).
        try:
            await asyncio.wait_for(self._no_client_loops.wait(), timeout)
        except TimeoutError:
            log.warning("broker.stop_intake_timeout", open_client_loops=self._client_loops)
        # Loops still running past the timeout: deliver for them, under the identity each connection
        # logged in with (a session amqtt holds without a verified connection delivers nothing).
        for conn in list(self._connections.values()):
            await self._deliver_leftovers(conn)

    async def _deliver_leftovers(self, conn: _Connection) -> None:
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
            if message is None or not message.topic or not device_may(device_id, Access.PUBLISH, message.topic):
                continue
            self._metrics.inc("gateway_broker_leftovers_delivered_total", 1, "parsed messages amqtt left behind")
            await self._sink.message(device_id, message.topic, bytes(message.data or b""))


async def _request(
    step: Callable[[Any], Awaitable[None]], conn: _Connection, queue: asyncio.Queue[Any], packet: Any
) -> None:
    """amqtt's SUBSCRIBE/UNSUBSCRIBE handler (it puts the request into `queue`), then note its turn and wake
    the client loop."""
    await step(packet)
    conn.requests.append(queue)
    conn.wake.set()


def _done(value: Any) -> asyncio.Future[Any]:
    """A finished future: amqtt's _handle_* methods take the waiter their loop got the value from."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def _slim_connection_state(handler: Any, session: Session) -> None:
    """amqtt's per-connection Queues and Events, with waiter lists that cost nothing while empty (slim_waits.py)."""
    slim_queue(handler._pending_subscriptions, items=True)  # one item per SUBSCRIBE packet, taken at once
    slim_queue(handler._pending_unsubscriptions, items=True)
    slim_queue(session.delivered_message_queue)  # a resumed session's are already slim: a no-op then
    slim_queue(session.retained_messages)


def _transport(writer: Any) -> asyncio.Transport | None:
    stream = getattr(writer, "_writer", None)  # amqtt's StreamWriterAdapter around asyncio's StreamWriter
    return getattr(stream, "transport", None)
