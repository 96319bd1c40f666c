"""The seams between the core and its adapters (broker backends, drivers, store)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from gateway.core.models import Reading

# Turns one decoded JSON object from a device of some kind into a Reading; raises PayloadError.
ReadingDecoder = Callable[[str, dict[str, Any], float], Reading]


class BrokerSink(Protocol):
    """What a LAN broker backend (embedded amqtt, managed Mosquitto) hands to the gateway.

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

