"""The device kinds on a Modbus bus, and how a domain command becomes a write to one of their points.

* `modbus-sensor`: readings only (CO2 and particle sensors, energy meters); takes no commands.
* `modbus-purifier`: an air purifier with an RS-485 port: setFanSpeed 0-5 writes its `fanSpeed` point,
  turnOn/turnOff its `powerOn` point (a coil or a register).
* `modbus-switch`: a relay: turnOn/turnOff write its `powerOn` point.

A kind that takes commands needs writable points with those metric names in the device's register map
(config validation checks it). The link writes, reads the point back, and the value read back is the
acknowledgement.
"""

from __future__ import annotations

from typing import ClassVar

from drivers.purifier import FAN_SPEED_MAX, FAN_SPEED_MIN
from gateway.core.device_commands import DeviceCommand, SetFanSpeed, TurnOn
from gateway.core.models import MetricValue

TRANSPORT = "modbus"
FAN_SPEED_POINT = "fanSpeed"
POWER_POINT = "powerOn"


def command_write(command: DeviceCommand) -> tuple[str, MetricValue]:
    """The metric name of the point a command writes, and the value it writes there."""
    if isinstance(command, SetFanSpeed):
        return FAN_SPEED_POINT, command.value
    return POWER_POINT, isinstance(command, TurnOn)


class ModbusSensorDriver:
    kind: ClassVar[str] = "modbus-sensor"
    transport: ClassVar[str] = TRANSPORT
    command_points: ClassVar[tuple[str, ...]] = ()

    def check_command(self, command: DeviceCommand) -> None:
        raise ValueError(f"a Modbus sensor takes no commands ({command.action})")


class ModbusPurifierDriver:
    kind: ClassVar[str] = "modbus-purifier"
    transport: ClassVar[str] = TRANSPORT
    command_points: ClassVar[tuple[str, ...]] = (FAN_SPEED_POINT, POWER_POINT)

    def check_command(self, command: DeviceCommand) -> None:
        if isinstance(command, SetFanSpeed) and not FAN_SPEED_MIN <= command.value <= FAN_SPEED_MAX:
            span = f"{FAN_SPEED_MIN}..{FAN_SPEED_MAX}"
            raise ValueError(f"setFanSpeed needs a whole number {span}, got {command.value!r}")


class ModbusSwitchDriver:
    kind: ClassVar[str] = "modbus-switch"
    transport: ClassVar[str] = TRANSPORT
    command_points: ClassVar[tuple[str, ...]] = (POWER_POINT,)

    def check_command(self, command: DeviceCommand) -> None:
        if isinstance(command, SetFanSpeed):
            raise ValueError("a Modbus switch has no fan speed: turnOn or turnOff only")
