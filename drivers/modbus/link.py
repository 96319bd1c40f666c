"""The Modbus field link: the `DeviceLink` of every device on every configured serial bus.

`DeviceLinks` routes by the driver's transport, one link per transport; this one owns all buses and runs
each bus's poll loop as its own supervised task (`modbus:{bus}` in /health): a lost port is reopened with
back-off and never disturbs the other buses. Commands go to the bus that carries the device.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from drivers.modbus.bus import ModbusBus
from gateway.core.device_commands import Ack, OutgoingCommand
from gateway.core.links import LinkError
from gateway.core.supervisor import Supervisor


class ModbusLink:
    name = "modbus"

    def __init__(self, buses: Sequence[ModbusBus], supervisor: Supervisor) -> None:
        self.buses = list(buses)
        self._supervisor = supervisor
        self._bus_of = {device_id: bus for bus in self.buses for device_id in bus.device_ids()}

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for bus in self.buses:
                self._supervisor.start(tg, f"modbus:{bus.name}", bus.run)

    def command_ready(self, device_id: str) -> bool:
        bus = self._bus_of.get(device_id)
        return bus is not None and bus.command_ready(device_id)

    async def send(self, command: OutgoingCommand) -> Ack | None:
        bus = self._bus_of.get(command.device_id)
        if bus is None:
            raise LinkError(f"device {command.device_id!r} is on no Modbus bus")
        return await bus.send(command)
