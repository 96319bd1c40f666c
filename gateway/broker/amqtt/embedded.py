"""The embedded amqtt broker as the gateway's LanBroker: built from the broker settings, run in the daemon's loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from gateway.broker.admission import ConnectionAdmission
from gateway.broker.amqtt import compat
from gateway.core.metrics import Metrics
from gateway.core.ports import BrokerSink
from gateway.core.throttle import LogThrottle
from gateway.core.topics import command_topic
from gateway.settings_broker import BrokerSection

if TYPE_CHECKING:
    from gateway.broker.amqtt.guarded import GuardedBroker
    from gateway.broker.amqtt.prelogin import AcceptErrors

log = structlog.get_logger(__name__)

# Connections the kernel completes and queues until the loop accepts them. asyncio's default of 100
# overflowed under a connection flood (50 at a time), and a device whose SYN was dropped waited for
# TCP's 1 s retransmission to log in. The kernel caps it at net.core.somaxconn (4096 by default).
LISTEN_BACKLOG = 1024


def _drop_startup_traceback(record: logging.LogRecord) -> bool:
    return record.getMessage() != "Broker startup failed"


def _drop_per_connection_noise(record: logging.LogRecord) -> bool:
    """amqtt logs every connection it accepts and every one that ends before a session: a flood of
    connect+close would write a line each. Our own logs say what matters (refused logins, with a reason)
    and the dropped ones are counted (gateway_broker_connections_dropped_total)."""
    message = record.getMessage()
    return not message.startswith(("Connection from ", "Failed to initialize client session"))


def amqtt_config(broker: BrokerSection) -> dict[str, Any]:
    listeners: dict[str, Any] = {}
    for index, lst in enumerate(broker.listeners):
        # amqtt requires a listener called "default"; the first one is it. Another one the installer
        # happened to call "default" must not replace it (a dict key: one port would silently stay shut).
        name = "default" if index == 0 else lst.name if lst.name != "default" else f"default-{index}"
        entry: dict[str, Any] = {
            "type": "tcp",
            "bind": _bind(lst.host, lst.port),
            "max_connections": lst.max_connections,
        }
        if lst.tls:
            entry.update(ssl=True, certfile=str(lst.certfile), keyfile=str(lst.keyfile))
            if lst.cafile is not None:
                entry["cafile"] = str(lst.cafile)
        elif index > 0:
            entry["ssl"] = False  # otherwise inherited from the default listener
        listeners[name] = entry
    return {
        "listeners": listeners,
        # No amqtt plugins: auth and ACL are GuardedBroker methods, and the default plugins
        # ($SYS, packet logging) cost ~30 % of the broker's CPU.
        "plugins": {},
        "timeout_disconnect_delay": 0,
        "session_expiry_interval": broker.session_expiry_seconds,
    }


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EmbeddedBroker:
    """Owns the amqtt broker: start, orderly stop, commands to devices, and credential reloads.

    Building one first checks that the installed amqtt is the one our layer was written against
    (compat.py): a different version fails here, with every missing or changed name, not later on a
    device's packet.
    """

    def __init__(
        self, broker: BrokerSection, devices: Mapping[str, str | None], *, sink: BrokerSink, metrics: Metrics
    ) -> None:
        compat.check_amqtt()
        # Imported only now: with another amqtt, the check above explains what an import would fail on.
        from gateway.broker.amqtt import session_states
        from gateway.broker.amqtt.guarded import GuardedBroker

        session_states.install()  # a transitions.Machine per session was 2/3 of its memory (see module)
        self._settings = broker
        admission = ConnectionAdmission(
            max_total=broker.max_connections,
            max_pending=broker.max_pending_connections,
            max_per_source=broker.max_connections_per_source,
            unlimited=[str(address) for address in broker.unlimited_sources],
        )
        self._broker = GuardedBroker(
            amqtt_config(broker),
            devices=devices,
            allow_anonymous=broker.allow_anonymous,
            sink=sink,
            metrics=metrics,
            keepalive_grace=broker.keepalive_grace,
            connect_deadline=broker.connect_timeout_seconds,
            max_packet=broker.max_packet_bytes,
            admission=admission,
            max_password_checks=broker.max_password_checks,
            require_client_cert=frozenset(_bind(x.host, x.port) for x in broker.listeners if x.cafile is not None),
        )
        self._broker.offline_queue = broker.offline_queue
        self._broker.open_acl = broker.acl == "open"
        compat.check_broker(self._broker)
        self._metrics = metrics
        self._accept_errors: AcceptErrors | None = None
        amqtt_log = logging.getLogger("amqtt.broker")
        if _drop_per_connection_noise not in amqtt_log.filters:
            amqtt_log.addFilter(_drop_per_connection_noise)
        metrics.gauge_callback(
            "gateway_broker_clients_connected",
            lambda: float(self.clients_connected()),
            "MQTT clients connected to the LAN broker",
        )
        metrics.gauge_callback("gateway_broker_connections_open", lambda: float(admission.total),
                               "open connections to the LAN broker, logged in or not")
        metrics.gauge_callback("gateway_broker_connections_pending", lambda: float(admission.pending),
                               "open connections to the LAN broker not logged in yet")

    @property
    def amqtt(self) -> GuardedBroker:
        """The amqtt Broker itself (tests look inside it)."""
        return self._broker

    async def start(self) -> None:
        """Bind every listener; if one cannot be bound, close those that were and raise (amqtt leaves them
        open, and logs its own traceback, which the daemon's one-line start-up error replaces)."""
        from gateway.broker.amqtt.prelogin import AcceptErrors

        amqtt_log = logging.getLogger("amqtt.broker")
        amqtt_log.addFilter(_drop_startup_traceback)
        self._accept_errors = AcceptErrors(asyncio.get_running_loop(), self._metrics, LogThrottle())
        try:
            await self._broker.start()
        except BaseException:
            self._accept_errors.remove()
            for server in self._broker._servers.values():
                if server.instance is not None:
                    server.instance.close()
                    await server.instance.wait_closed()
            raise
        finally:
            amqtt_log.removeFilter(_drop_startup_traceback)
        for server in self._broker._servers.values():
            if server.instance is not None:
                for sock in server.instance.sockets:
                    with sock.dup() as listening:  # the same socket: listen() again only sets its queue length
                        listening.listen(LISTEN_BACKLOG)
        for lst in self._settings.listeners:
            log.info("broker.listening", listener=lst.name, host=lst.host, port=lst.port, tls=lst.tls)

    async def run(self) -> None:
        await asyncio.Event().wait()  # amqtt runs in the daemon's loop: nothing to keep alive apart

    def bound_ports(self) -> list[int]:
        ports: list[int] = []
        for server in self._broker._servers.values():
            if server.instance is not None:
                ports.extend(sock.getsockname()[1] for sock in server.instance.sockets)
        return ports

    def clients_connected(self) -> int:
        return sum(1 for s, _ in self._broker.sessions.values() if s.transitions.is_connected())

    def update_devices(self, devices: Mapping[str, str | None], *, allow_anonymous: bool) -> None:
        self._broker.set_devices(devices, allow_anonymous=allow_anonymous)

    def command_ready(self, device_id: str) -> bool:
        """Is the device connected with a subscription that receives its command topic?"""
        topic = command_topic(device_id)
        broker = self._broker
        for topic_filter, subscribers in broker._subscriptions.items():
            if not broker._matches(topic, topic_filter):
                continue
            for session, _qos in subscribers:
                if session.client_id == device_id and session.transitions.is_connected():
                    return True
        return False

    async def send(self, device_id: str, payload: bytes) -> None:
        await self._broker.internal_message_broadcast(command_topic(device_id), payload, 1)

    async def stop_intake(self) -> None:
        await self._broker.stop_intake()

    async def shutdown(self) -> None:
        try:
            await self._broker.shutdown()
        finally:
            self._broker.close_password_pool()
            if self._accept_errors is not None:
                self._accept_errors.remove()
