"""A connection before its login: admitted or refused at accept, its CONNECT read within a size limit.

* **Admission** (gateway/broker/admission.py decides): `GuardedBroker.stream_connected` asks before
  amqtt sees the connection; a refused one is aborted there, before a byte of it is read.
* **TLS** (`PreLogin.start_tls`): a TLS listener accepts plain TCP (`GuardedBroker._create_server_instance`
  takes the listener's SSL context out of asyncio's start_server) and the handshake runs only for an
  admitted connection, within its CONNECT deadline. With the context in start_server, asyncio did the
  handshake (up to 60 s, a private key operation each) before the callback that admits: a flood of TLS
  connects cost a handshake each, and no limit saw them while they shook hands.
* **The CONNECT deadline** runs from the accept: the handshake and the CONNECT share it.
* **The CONNECT** (`read_connect`): its fixed header is read first. Anything but a CONNECT, or one
  announcing more than the limit, is a protocol violation and the body is never read (amqtt parsed
  field after field of whatever length was announced: a 256 MB CONNECT was read for 3 MB before it
  failed). The body is then read whole and amqtt parses it from memory, so a CONNECT whose fields run
  past its own length is malformed instead of eating the next packet.
* **Accept errors** (`AcceptErrors`): when the process is out of files, asyncio's listener reports every
  failed accept to the loop's exception handler, which logs a traceback each (75 MB of log in 70 s in
  the issue's flood); ours counts them and logs once a minute.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import structlog
from amqtt.adapters import BufferReader
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.packet import CONNECT, MQTTFixedHeader
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

from gateway.broker.admission import ConnectionAdmission, Ticket
from gateway.broker.amqtt.connection import transport_of
from gateway.core.metrics import Metrics
from gateway.core.throttle import LogThrottle

log = structlog.get_logger(__name__)

_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message (selector_events.py)

# A CONNECT holds a client id, credentials and a Will: a device's is a few hundred bytes. The limit bounds
# what each connection not yet logged in can make the daemon hold (x broker.max_pending_connections).
MAX_CONNECT_BYTES = 16 * 1024


class ConnectDropped(Exception):
    """The connection ended (or must be dropped) before a CONNECT was read; `reason` is the metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


async def read_connect(
    reader: Any, writer: Any, plugins: Any, max_bytes: int
) -> tuple[BrokerProtocolHandler, Session]:
    """Read and validate the CONNECT (amqtt's init_from_connect on the packet held in memory).

    Raises ConnectDropped: "closed-before-connect" (EOF first), "not-connect", "oversized-connect",
    "malformed-connect"; or MQTTError when amqtt refuses the CONNECT (it answers with a CONNACK first).
    """
    try:
        fixed = await MQTTFixedHeader.from_stream(reader)
    except MQTTError as exc:  # a remaining length of more than four bytes
        raise ConnectDropped("malformed-connect", str(exc)) from exc
    if fixed is None:
        raise ConnectDropped("closed-before-connect")
    if fixed.packet_type != CONNECT:
        raise ConnectDropped("not-connect", f"first packet of type {fixed.packet_type}")  # [MQTT-3.1.0-1]
    if fixed.remaining_length > max_bytes:
        raise ConnectDropped("oversized-connect", f"CONNECT of {fixed.remaining_length} bytes, limit {max_bytes}")
    try:
        body = await reader.read(fixed.remaining_length) if fixed.remaining_length else b""
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ConnectDropped("closed-before-connect") from exc
    try:
        handler, session = await BrokerProtocolHandler.init_from_connect(
            BufferReader(fixed.to_bytes() + body), writer, plugins
        )
    except (NoDataError, ValueError, UnicodeDecodeError) as exc:  # fields longer than the packet, bad UTF-8
        raise ConnectDropped("malformed-connect", repr(exc)) from exc
    return handler, session


class PreLogin:
    """Connections from accept to login: admission, the CONNECT deadline and size, counted and logged sparingly."""

    def __init__(
        self, admission: ConnectionAdmission, metrics: Metrics, throttle: LogThrottle, *, connect_deadline: float
    ) -> None:
        self.admission = admission
        self._metrics = metrics
        self._throttle = throttle
        self._connect_deadline = connect_deadline
        self._tickets: dict[object, Ticket] = {}  # transport -> its ticket, while its connection is open
        # Listener name -> the SSL context of a TLS listener, whose handshake start_tls does after admission.
        self.tls_contexts: dict[str, ssl.SSLContext] = {}

    def admit(self, writer: asyncio.StreamWriter) -> Ticket | None:
        """A ticket for a new connection, or None: refused, and its socket already aborted."""
        transport = writer.transport
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        ticket, refused, evicted = self.admission.admit(source, transport.abort)
        if evicted:
            self._dropped("evicted", evicted)
        if ticket is None:
            transport.abort()
            self._metrics.inc("gateway_broker_connections_refused_total", 1,
                              "connections closed at accept: a connection limit was reached", reason=refused)
            left_out = self._throttle.allow(("refused", refused))
            if left_out is not None:
                log.warning("broker.connection_refused", reason=refused, source=source,
                            total=self.admission.total, pending=self.admission.pending,
                            left_out_since_last=left_out)
            return None
        ticket.connect_by = asyncio.get_running_loop().time() + self._connect_deadline
        self._tickets[transport] = ticket
        return ticket

    async def start_tls(self, ticket: Ticket, writer: asyncio.StreamWriter, listener_name: str) -> bool:
        """The TLS handshake of an admitted connection on a TLS listener, within its CONNECT deadline (True at
        once on a plain listener). False: it failed or timed out; the socket is dropped and counted.

        Called with no await between the accept and here: asyncio's start_tls stops reading the socket before
        the loop runs its first read, so the ClientHello is still in the socket for the handshake (a byte
        read into the plain StreamReader first would be lost to it).
        """
        context = self.tls_contexts.get(listener_name)
        if context is None:
            return True
        plain = writer.transport
        try:
            async with asyncio.timeout_at(ticket.connect_by):
                await writer.start_tls(context, ssl_handshake_timeout=self._connect_deadline)
        except (OSError, AttributeError) as exc:  # (ssl.SSLError, ConnectionError and TimeoutError are OSErrors)
            if isinstance(exc, AttributeError):
                if writer.transport is not None:
                    raise
                # Closed while it shook hands (evicted, or aborted): asyncio ends the handshake as done but with
                # no TLS transport, and start_tls fails on that. The stream gets its (closed) TCP transport back,
                # or its __del__ would fail on None, an "Exception ignored" line per such connection.
                writer._transport = plain  # type: ignore[attr-defined]
            if not ticket.released:  # (an evicted one is counted as such)
                self._dropped("connect-timeout" if isinstance(exc, TimeoutError)
                              else "tls-failed" if isinstance(exc, ssl.SSLError) else "closed-before-connect")
            plain.abort()
            return False
        del self._tickets[plain]
        self._tickets[writer.transport] = ticket  # what amqtt's adapter (and transport_of) hold from now on
        return True

    def release(self, ticket: Ticket, writer: asyncio.StreamWriter) -> None:
        self._tickets.pop(writer.transport, None)
        self.admission.release(ticket)

    def logged_in(self, writer: Any) -> None:
        ticket = self._tickets.get(transport_of(writer))
        if ticket is not None:
            self.admission.logged_in(ticket)

    async def read_connect(self, reader: Any, writer: Any, plugins: Any) -> tuple[BrokerProtocolHandler, Session]:
        """The CONNECT within the deadline (see `read_connect`); any failure closes the socket at once and
        raises AMQTTError or MQTTError, which amqtt's _client_connected takes as "no session"."""
        transport = transport_of(writer)
        ticket = self._tickets.get(transport)
        # (every connection has its ticket from stream_connected; the fallback keeps the deadline regardless)
        now = asyncio.get_running_loop().time()
        connect_by = ticket.connect_by if ticket is not None else now + self._connect_deadline
        try:
            async with asyncio.timeout_at(connect_by):
                handler, incoming = await read_connect(reader, writer, plugins, MAX_CONNECT_BYTES)
        except MQTTError:
            # amqtt refused the CONNECT's content (protocol name or level, flags) and answered it.
            self._dropped("refused-connect")
            if not transport.is_closing():  # (closed after its CONNACK was sent, where one applies)
                transport.abort()
            raise
        except (ConnectDropped, TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            # Closed before its CONNECT, or no CONNECT within the deadline, or a protocol violation: drop the
            # socket now. amqtt leaves it to the garbage collector, and until then it stays open (CLOSE-WAIT),
            # one file each: anyone who can reach the port could exhaust the daemon's files without logging in.
            reason = (exc.reason if isinstance(exc, ConnectDropped)
                      else "connect-timeout" if isinstance(exc, TimeoutError) else "closed-before-connect")
            if ticket is None or not ticket.released:  # (an evicted one is counted as such)
                self._dropped(reason)
            transport.abort()
            raise AMQTTError(reason) from exc
        if ticket is not None:
            self.admission.connect_read(ticket)
        return handler, incoming

    def _dropped(self, reason: str, count: int = 1) -> None:
        self._metrics.inc("gateway_broker_connections_dropped_total", count,
                          "connections closed before their login", reason=reason)
        if reason not in ("closed-before-connect", "connect-timeout", "evicted"):  # protocol violations
            left_out = self._throttle.allow(("dropped", reason))
            if left_out is not None:
                log.warning("broker.connect_refused", reason=reason, left_out_since_last=left_out)


class AcceptErrors:
    """The event loop's exception handler while the broker runs: failed accepts counted, logged once a minute.

    Everything else goes to the handler that was there before (or the loop's default).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: Metrics, throttle: LogThrottle) -> None:
        self._loop = loop
        self._metrics = metrics
        self._throttle = throttle
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _ACCEPT_FAILED:
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        error = context.get("exception")
        self._metrics.inc("gateway_broker_accept_errors_total", 1,
                          "connections the listener could not accept (out of files or memory)")
        left_out = self._throttle.allow("accept-failed")
        if left_out is not None:
            # asyncio retries the listener a second later by itself.
            log.error("broker.accept_failed", error=str(error), left_out_since_last=left_out)

    def remove(self) -> None:
        if self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self._previous)
