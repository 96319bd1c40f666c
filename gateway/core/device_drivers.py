"""Which driver speaks for a configured device: the registry's kind of the device -> the loaded driver."""

from __future__ import annotations

from typing import cast

from gateway.core.device_commands import DeviceCommand, TurnOn
from gateway.core.links import DeviceDriver, MqttDeviceDriver
from gateway.core.registry import DeviceRegistry


class DeviceDrivers:
    """The drivers of the configured kinds (loaded by the composition root), looked up by device id."""

    def __init__(self, registry: DeviceRegistry, drivers: dict[str, DeviceDriver]) -> None:
        self._registry = registry
        self.by_kind = drivers  # kind -> driver; a reload adds the kinds it brings

    def of(self, device_id: str) -> DeviceDriver | None:
        """The driver of a configured device (None for any other id)."""
        kind = self._registry.kind(device_id)
        return self.by_kind.get(kind) if kind is not None else None

    def mqtt_of(self, device_id: str) -> MqttDeviceDriver | None:
        """The driver of a configured device on the LAN broker (None for any other id)."""
        driver = self.of(device_id)
        return cast(MqttDeviceDriver, driver) if driver is not None and driver.transport == "mqtt" else None

    def transport_of(self, device_id: str) -> str | None:
        driver = self.of(device_id)
        return driver.transport if driver is not None else None

    def check_command(self, device_id: str, command: DeviceCommand) -> None:
        """Raise ValueError if the device's kind cannot do `command` (an unknown device: no objection here)."""
        driver = self.of(device_id)
        if driver is not None:
            driver.check_command(command)

    def takes_commands(self, device_id: str) -> bool:
        try:
            self.check_command(device_id, TurnOn())
        except ValueError:
            return False
        return True
