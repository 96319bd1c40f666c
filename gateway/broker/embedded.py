"""The embedded amqtt broker as a service: built from Settings, started in the daemon's loop."""

from __future__ import annotations

from typing import Any

import structlog

from gateway.broker.guarded import DeviceTable, GuardedBroker
from gateway.core.metrics import Metrics
from gateway.core.ports import BrokerSink
from gateway.settings import BrokerSection, DeviceSettings

log = structlog.get_logger(__name__)


def device_table(devices: list[DeviceSettings], *, allow_anonymous: bool) -> DeviceTable:
    return DeviceTable({d.id: d.password_hash for d in devices}, allow_anonymous=allow_anonymous)


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
    """Owns the amqtt broker: start, orderly stop, and credential reloads."""

    def __init__(
        self, broker: BrokerSection, devices: list[DeviceSettings], *, sink: BrokerSink, metrics: Metrics
    ) -> None:
        self._settings = broker
        self._broker = GuardedBroker(
            amqtt_config(broker),
            devices=device_table(devices, allow_anonymous=broker.allow_anonymous),
            sink=sink,
            metrics=metrics,
            keepalive_grace=broker.keepalive_grace,
            require_client_cert=frozenset(_bind(x.host, x.port) for x in broker.listeners if x.cafile is not None),
        )
        metrics.gauge_callback(
            "gateway_broker_clients_connected",
            lambda: float(sum(1 for s, _ in self._broker.sessions.values() if s.transitions.is_connected())),
            "MQTT clients connected to the LAN broker",
        )

    @property
    def amqtt(self) -> GuardedBroker:
        return self._broker

    async def start(self) -> None:
        await self._broker.start()
        for lst in self._settings.listeners:
            log.info("broker.listening", listener=lst.name, host=lst.host, port=lst.port, tls=lst.tls)

    def bound_ports(self) -> list[int]:
        """Ports actually bound (a configured port 0 picks a free one)."""
        ports: list[int] = []
        for server in self._broker._servers.values():
            instance = getattr(server, "instance", None)
            for sock in getattr(instance, "sockets", None) or ():
                ports.append(sock.getsockname()[1])
        return ports

    def update_devices(self, devices: list[DeviceSettings], *, allow_anonymous: bool) -> None:
        """Config reload: new passwords and device list apply to the next login."""
        self._broker.devices = device_table(devices, allow_anonymous=allow_anonymous)

    def has_command_subscription(self, device_id: str) -> bool:
        """Is the device connected with a subscription that receives `device/{id}/command`?"""
        topic = f"device/{device_id}/command"
        broker = self._broker
        for topic_filter, subscribers in broker._subscriptions.items():
            if not broker._matches(topic, topic_filter):
                continue
            for session, _qos in subscribers:
                if session.client_id == device_id and session.transitions.is_connected():
                    return True
        return False

    async def publish(self, topic: str, payload: bytes) -> None:
        """Send a message from the gateway itself to the subscribed devices (QoS 1: commands)."""
        await self._broker.internal_message_broadcast(topic, payload, 1)

    async def stop_intake(self) -> None:
        await self._broker.stop_intake()

    async def shutdown(self) -> None:
        try:
            await self._broker.shutdown()
        finally:
            self._broker.close_password_pool()
