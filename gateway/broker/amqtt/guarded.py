"""amqtt's Broker as the gateway runs it: our logins, ACL and ingest hook, and fixes for five of its faults.

amqtt 0.12 (pinned, checked at start by compat.py; tests/integration/test_broker_guards.py and
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
   per connection (`Connection`).

This class does logins before any session lookup (4), takeovers, the life of each connection (5),
silence (2), TLS handshakes only for admitted connections, client certificates and the orderly shutdown;
routing.py (its base) the ACL, the ingest hook, retained messages (1, 3) and the QoS of each delivery;
logins.py the credential check; connection.py, reader_loop.py, publish_flow.py and client_loop.py what
runs per connection.

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
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import structlog
from amqtt.broker import Broker
from amqtt.contexts import ListenerConfig, ListenerType
from amqtt.errors import MQTTError
from amqtt.session import Session

from gateway.broker.admission import ConnectionAdmission
from gateway.broker.amqtt import client_loop, connection
from gateway.broker.amqtt.connection import Connection
from gateway.broker.amqtt.logins import CredentialCheck, DeviceTable, answer_refused, resume_into
from gateway.broker.amqtt.prelogin import PreLogin
from gateway.broker.amqtt.routing import RoutingBroker
from gateway.core.metrics import Metrics
from gateway.core.ports import BrokerSink

log = structlog.get_logger(__name__)

# How long a new login waits for the connection it replaces to end (Will published, acknowledged messages
# handed over) before it goes on regardless; that connection's socket is already aborted by then.
_TAKEOVER_WAIT = 5.0
# How long a graceful stop waits for the store to commit what connections handed over, so their PUBACKs go
# out before the sockets close (a store with storage.idle_linger_ms = 1000 commits within it).
_ACK_WAIT = 1.5


class GuardedBroker(RoutingBroker):
    """The amqtt Broker the embedded backend runs: who logs in, and the life of each connection (see the module)."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        devices: Mapping[str, str | None],
        allow_anonymous: bool,
        sink: BrokerSink,
        metrics: Metrics,
        keepalive_grace: float = 1.5,
        require_client_cert: frozenset[str] = frozenset(),
        connect_deadline: float = 10.0,
        max_packet: int = 256 * 1024,
        admission: ConnectionAdmission | None = None,
        max_password_checks: int = 1,
    ) -> None:
        super().__init__(config, sink=sink, metrics=metrics)
        self._prelogin = PreLogin(
            admission or ConnectionAdmission(max_total=1 << 30, max_pending=1 << 30, max_per_source=1 << 30),
            metrics, self._throttle, connect_deadline=connect_deadline,
        )
        self._max_packet = max_packet
        self._check_credentials = CredentialCheck(max_checks=max_password_checks, metrics=metrics)
        self.devices = DeviceTable(dict(devices), allow_anonymous=allow_anonymous)
        self._grace = keepalive_grace
        self._require_client_cert = require_client_cert
        self._connections: dict[int, Connection] = {}  # id(handler) -> accepted connection, until its loop ended
        self._live: dict[str, int] = {}  # device id -> open connections (a takeover briefly has two)
        self._closing = False
        self._client_loops = 0  # _handle_client_session calls still running
        self._no_client_loops = asyncio.Event()
        self._no_client_loops.set()
        self._silence_tasks: set[asyncio.Future[None]] = set()

    @property
    def device_connections(self) -> int:
        """Logged-in device connections open now (a takeover briefly counts both); 0 once every one is gone."""
        return sum(self._live.values())

    @property
    def client_sessions_running(self) -> int:
        """Client sessions whose handling (and its cleanup) has not ended yet."""
        return self._client_loops

    def set_devices(self, devices: Mapping[str, str | None], *, allow_anonymous: bool) -> None:
        """Config reload: device id -> password hash, for the next login (replaced whole, never edited)."""
        self.devices = DeviceTable(dict(devices), allow_anonymous=allow_anonymous)

    def close_password_pool(self) -> None:
        self._check_credentials.close()

    # --- admission: connection limits, before amqtt sees the connection (prelogin.py) ---------------

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        ticket = self._prelogin.admit(writer)
        if ticket is None:
            return  # refused: already aborted, nothing read (on a TLS listener: no handshake either)
        try:
            if await self._prelogin.start_tls(ticket, writer, listener_name):  # (no await before it: see there)
                await super().stream_connected(reader, writer, listener_name)
        finally:
            self._prelogin.release(ticket, writer)

    # --- authentication: before amqtt touches any session -------------------------------------------

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Session]:
        """Read the CONNECT, verify it, end the device's previous connection, then find its session.

        Replaces amqtt's version, which looks up (and wipes, reuses or takes over) the session of the
        client id before `_authenticate` runs: a wrong password could disconnect a device, delete its
        subscriptions, or overwrite its Will. A refusal raises, so amqtt never gets to the session.
        """
        handler, incoming = await self._prelogin.read_connect(reader, writer, self.plugins_manager)
        device_id, reason = (
            (None, "shutting-down") if self._closing else await self._check_credentials(self.devices, incoming)
        )
        if device_id is None:
            await self._refuse(incoming, writer, reason)
        self._prelogin.logged_in(writer)
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
        conn = Connection(device_id, handler, reader, writer, session)
        self._connections[id(handler)] = conn
        self._current[id(session)] = conn
        silence_closer = None
        if session.keep_alive > 0:
            # The handler's reader waits this long for the next packet, then calls handle_read_timeout().
            # Ours closes the connection as abnormal, so the Will is published.
            session.keep_alive = session.keep_alive * self._grace
            silence_closer = self._silence_closer(handler, session)
        connection.attach(
            conn,
            deliver=self._deliver_read,
            silence_closer=silence_closer,
            protocol_error=functools.partial(self._protocol_error, device_id),
            max_packet=self._max_packet,
        )
        return handler, session

    async def _refuse(self, session: Session, writer: Any, reason: str) -> NoReturn:
        """Count and log a refused login, answer it with a CONNACK code, close, and end amqtt's handling."""
        self._metrics.inc("gateway_broker_logins_refused_total", 1, "refused MQTT logins", reason=reason)
        left_out = self._throttle.allow(("login-refused", reason))
        if left_out is not None:
            log.warning(
                "broker.login_refused",
                client_id=session.client_id,
                username=session.username,
                reason=reason,
                remote=session.remote_address,
                left_out_since_last=left_out,
            )
        await answer_refused(writer)
        # amqtt's _client_connected catches this, releases the listener slot and forgets the connection.
        raise MQTTError(f"login refused: {reason}")

    async def _end_connections_of(self, device_id: str, *, keep: Connection | None) -> None:
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
            conn.abort()  # nothing more is read from a replaced connection
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
            resume_into(session, incoming)
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
        """Ours instead of amqtt's: client_loop.py."""
        conn = self._connections.get(id(handler))
        if conn is None:  # not a verified connection: amqtt refuses those before its loop, so never here
            return
        await client_loop.run(self, conn, client_session, functools.partial(self._protocol_error, conn.device_id))

    async def _connection_ended(self, conn: Connection) -> None:
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

    def _protocol_error(self, device_id: str, error: MQTTError) -> None:
        self._metrics.inc("gateway_broker_protocol_errors_total", 1, "connections closed for a protocol violation")
        left_out = self._throttle.allow("protocol-error")
        if left_out is not None:
            log.warning("broker.protocol_error", device_id=device_id, error=str(error), left_out_since_last=left_out)

    # --- fix 2: drop clients silent for longer than keepalive x grace (armed in _initialize_client_session) --

    def _silence_closer(self, handler: Any, session: Session) -> Callable[[], None]:
        def close_silent_client() -> None:
            self._metrics.inc("gateway_broker_silent_clients_total", 1, "clients dropped for silence")
            log.warning("broker.client_silent", client_id=session.client_id, keepalive=session.keep_alive)
            task = asyncio.ensure_future(handler.handle_connection_closed())
            self._silence_tasks.add(task)
            task.add_done_callback(self._silence_tasks.discard)

        return close_silent_client

    # --- TLS: the handshake after admission; a listener with a CA requires client certificates --------

    async def _create_server_instance(
        self, listener_name: str, listener_type: ListenerType, address: str | None, port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> Any:
        """amqtt's listener, except that a TLS one accepts plain TCP: stream_connected admits a connection
        first and only then does its handshake (prelogin.py), so a connection over a limit costs none."""
        if ssl_context is not None and listener_type == ListenerType.TCP:
            self._prelogin.tls_contexts[listener_name] = ssl_context
            ssl_context = None
        return await super()._create_server_instance(listener_name, listener_type, address, port, ssl_context)

    def _create_ssl_context(self, listener: ListenerConfig) -> ssl.SSLContext:
        ctx: ssl.SSLContext = Broker._create_ssl_context(listener)
        bind = listener.get("bind")
        if bind in self._require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    # --- orderly shutdown ----------------------------------------------------------------------------

    async def stop_intake(self, timeout: float = 3.0) -> None:
        """Accept no new connections or packets, and hand everything already parsed to the sink.

        QoS 1 messages are acknowledged only once stored (publish_flow.py): stop reading every connection,
        send the PUBACKs of what the store commits within a short wait, then close it (the readers end
        normally on the closed socket); let each client loop finish what it holds (QoS 0/2 messages and
        what a device sent just before it went are in the delivery queues), then deliver what is still
        queued ourselves.
        """
        self._closing = True
        for server in self._servers.values():
            if server.instance is not None:
                server.instance.close()
        # Every accepted connection, also one amqtt has not attached to its handler yet: nothing more is read
        # (bytes received but not parsed were never acknowledged: QoS 1 devices resend them, QoS 0 promised
        # nothing), and what the store commits meanwhile is acknowledged before the socket closes; a device
        # told nothing would send it again after the restart.
        await asyncio.gather(*(conn.acknowledge_and_close(_ACK_WAIT) for conn in list(self._connections.values())))
        # Each client loop now finishes the message it holds (and publishes its Will).
        try:
            await asyncio.wait_for(self._no_client_loops.wait(), timeout)
        except TimeoutError:
            log.warning("broker.stop_intake_timeout", open_client_loops=self._client_loops)
        # Loops still running past the timeout: deliver for them, under the identity each connection
        # logged in with (a session amqtt holds without a verified connection delivers nothing).
        for conn in list(self._connections.values()):
            await self._deliver_leftovers(conn)
