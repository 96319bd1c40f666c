"""The seams between the core and its adapters (broker backends, drivers, store)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol


class BrokerSink(Protocol):
    """What a LAN broker backend (embedded amqtt, managed Mosquitto) hands to the gateway.

    `connection` is the presence event (a device's first connection opened, its last one closed) and
    `subscribed` the command-readiness event.

    `message` is awaited on the broker's path for that one client: it may wait (back-pressure
    on that client) but must never raise.
    """

    async def message(self, client_id: str, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        """Take a message; returns its receipt: a future done once what the message produced is stored
        (None: nothing left to wait for). The broker sends a QoS 1 PUBACK only then, so a crash never
        loses a reading its device was told is safe. A receipt that fails means "not stored": no PUBACK,
        and the device sends the message again on its next connection. Receipts are shared between
        messages (one per store commit): watch one with add_done_callback or await it through
        asyncio.shield, never cancel it."""
        ...

    async def connection(self, client_id: str, connected: bool) -> None: ...

    async def subscribed(self, client_id: str, topic_filter: str) -> None:
        """The client's subscription is in place (also a persistent one, on reconnect): messages
        published to it from now on reach the client. A device is ready for commands from here."""
        ...



class LanBroker(Protocol):
    """The MQTT broker the devices on the LAN log in to, whatever runs it (`broker.backend` in the config).

    What devices publish reaches the gateway through the BrokerSink the backend was built with.
    """

    async def start(self) -> None:
        """Bind the listeners and accept logins."""
        ...

    async def run(self) -> None:
        """Supervised while the gateway runs (after start): keeps what the broker depends on alive; returns or
        raises when it failed (the supervisor calls it again after its back-off, which restarts what died)."""
        ...

    async def stop_intake(self) -> None:
        """Accept no new logins or messages; what was already acknowledged reaches the sink first."""
        ...

    async def shutdown(self) -> None:
        """Close every connection and the listeners (after stop_intake)."""
        ...

    async def send(self, device_id: str, payload: bytes) -> None:
        """Publish `payload` at QoS 1 to the device's command topic."""
        ...

    def command_ready(self, device_id: str) -> bool:
        """Is the device connected and subscribed to its command topic?"""
        ...

    def clients_connected(self) -> int:
        """MQTT clients connected now."""
        ...

    def update_devices(self, devices: Mapping[str, str | None], *, allow_anonymous: bool) -> None:
        """Config reload: device id -> password hash in the backend's format (gateway.broker.device_logins;
        None: no password, only with anonymous access on); applies to the next login."""
        ...

    def bound_ports(self) -> list[int]:
        """The ports actually bound (a configured port 0 picks a free one)."""
        ...
