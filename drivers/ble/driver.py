"""The device kinds of BLE sensors (transport "ble"): they take no commands; their readings come from the
BLE link (adverts decoded by drivers/ble/formats.py, GATT values by drivers/ble/gatt_values.py)."""

from __future__ import annotations

from typing import ClassVar

from gateway.core.device_commands import DeviceCommand


class BleSensorDriver:
    kind: ClassVar[str] = "ble-gatt"
    transport: ClassVar[str] = "ble"

    def check_command(self, command: DeviceCommand) -> None:
        raise ValueError(f"a BLE sensor takes no commands ({command.action})")


class BthomeDriver(BleSensorDriver):
    kind: ClassVar[str] = "ble-bthome"


class RuuviDriver(BleSensorDriver):
    kind: ClassVar[str] = "ble-ruuvi"


class AtcDriver(BleSensorDriver):
    kind: ClassVar[str] = "ble-atc"


class PvvxDriver(BleSensorDriver):
    kind: ClassVar[str] = "ble-pvvx"
