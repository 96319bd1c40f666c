"""Ports between the core and the things that speak field protocols.

* :class:`DeviceDriver`: one per device kind (drivers/registry.py maps kinds to them). It owns the kind's
  protocol: value ranges, and for devices on the LAN broker the reading and ack payloads and the command
  payload (:class:`MqttDeviceDriver`).
* :class:`DeviceLink`: one per field link (the LAN broker's devices, later each serial bus, the BLE
  scanner). Control sends domain commands through it; it is run under the supervisor.
* :class:`DeviceIntake`: the one entry through which every link hands over what its devices said:
  readings, presence, acknowledgements, and what it could not accept (quarantine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import ClassVar, Protocol

from gateway.core.device_commands import Ack, DeviceCommand, OutgoingCommand
from gateway.core.models import Reading


class DeviceDriver(Protocol):
    kind: ClassVar[str]
    transport: ClassVar[str]  # "mqtt" (the LAN broker); later "modbus", "ble"

    def check_command(self, command: DeviceCommand) -> None:
        """Raise ValueError (its message names the value) if this kind cannot do `command`."""
        ...


class MqttDeviceDriver(DeviceDriver, Protocol):
    """A device kind that speaks CONTRACT section 1 over the LAN broker."""

    def decode_reading(self, device_id: str, payload: bytes, received_at: float) -> Reading:
        """`device/{id}/data` -> a Reading; raises PayloadError (the quarantine reason)."""
        ...

    def decode_ack(self, payload: bytes) -> Ack:
        """`device/{id}/ack` -> an Ack; raises PayloadError."""
        ...

    def encode_command(self, command: OutgoingCommand) -> bytes:
        """The payload for `device/{id}/command`; the same bytes for every attempt of one command."""
        ...


class LinkError(Exception):
    """A command could not be handed to the device (not connected, bus down); the attempt counts as sent
    and unanswered, so the command service retries at its deadline."""


class DeviceLink(Protocol):
    name: str

    async def run(self) -> None:
        """Keep the link up until cancelled; raising means the link failed and the supervisor restarts it."""
        ...

    def command_ready(self, device_id: str) -> bool:
        """Can a command reach the device now?"""
        ...

    async def send(self, command: OutgoingCommand) -> Ack | None:
        """Hand one attempt of a command to the device. Returns its Ack when the protocol's reply is the
        acknowledgement (a Modbus write), None when the Ack comes later through DeviceIntake.acknowledged
        (MQTT). Raises LinkError when nothing could be sent."""
        ...


class DeviceIntake(Protocol):
    async def accept(self, reading: Reading) -> None:
        """A decoded, validated reading of a configured device: stored (waits only for room in the store)."""
        ...

    async def presence(self, device_id: str, online: bool, reason: str) -> None: ...

    async def acknowledged(self, device_id: str, ack: Ack) -> None: ...

    async def quarantine(
        self, *, device_id: str | None, source: str | None, topic: str, payload: bytes, reason: str
    ) -> None:
        """Keep what could not be accepted, with the reason (`source`: the client id or link that sent it)."""
        ...

    def command_ready(self, device_id: str) -> None:
        """The device can take commands from now on (it reconnected, or subscribed again)."""
        ...

    def receipt(self) -> asyncio.Future[None] | None:
        """Done once everything handed over so far is stored (None: nothing to wait for)."""
        ...

    def seen(self, device_id: str, at: float) -> None:
        """The device said something (any message) at `at`: its last-seen time moves."""
        ...


class DeviceLinks:
    """Which link reaches which device (by the transport of the device's driver): what control sends through."""

    def __init__(self, links: Mapping[str, DeviceLink], transport_of: Callable[[str], str | None]) -> None:
        self._links = dict(links)  # transport -> link
        self._transport_of = transport_of

    def all(self) -> list[DeviceLink]:
        return list(self._links.values())

    def _link(self, device_id: str) -> DeviceLink | None:
        transport = self._transport_of(device_id)
        return self._links.get(transport) if transport is not None else None

    def command_ready(self, device_id: str) -> bool:
        link = self._link(device_id)
        return link is not None and link.command_ready(device_id)

    async def send(self, command: OutgoingCommand) -> Ack | None:
        link = self._link(command.device_id)
        if link is None:
            raise LinkError(f"no link reaches device {command.device_id!r}")
        return await link.send(command)
