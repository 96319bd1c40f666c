"""The device link of every device on the LAN broker, whichever backend runs the broker.

Commands go out as the device driver's payload on `device/{id}/command` (QoS 1); acknowledgements come
back later on `device/{id}/ack` through ingest (gateway/ingest/mqtt_intake.py), so `send` returns None.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.core.device_commands import Ack, OutgoingCommand
from gateway.core.links import LinkError, MqttDeviceDriver


class LanBrokerLink:
    name = "lan-broker"

    def __init__(
        self,
        *,
        run: Callable[[], Awaitable[None]],
        send: Callable[[str, bytes], Awaitable[None]],
        command_ready: Callable[[str], bool],
        driver_of: Callable[[str], MqttDeviceDriver | None],
    ) -> None:
        self._run = run  # LanBroker.run: supervised here, as this link
        self._send = send  # LanBroker.send: the payload to the device's command topic
        self._ready = command_ready
        self._driver_of = driver_of  # device id -> its driver; None: not a configured device on this broker

    async def run(self) -> None:
        # The daemon starts and stops the broker in its shutdown order; in between, what the backend keeps
        # alive (a Mosquitto child) fails and is restarted here.
        await self._run()

    def command_ready(self, device_id: str) -> bool:
        return self._ready(device_id)

    async def send(self, command: OutgoingCommand) -> Ack | None:
        driver = self._driver_of(command.device_id)
        if driver is None:
            raise LinkError(f"device {command.device_id!r} is not a device of the LAN broker")
        try:
            payload = driver.encode_command(command)
        except ValueError as exc:  # the driver's kind cannot carry this command (control checks before)
            raise LinkError(f"device {command.device_id!r}: {exc}") from exc
        await self._send(command.device_id, payload)
        return None
