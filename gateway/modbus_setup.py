"""Composition of the Modbus link from the `[modbus]` settings (called by gateway.app).

pymodbus and the bus code are imported only when a bus is configured: a gateway without RS-485 pays
nothing for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gateway.core.clock import Clock
from gateway.core.links import DeviceIntake, DeviceLink
from gateway.core.metrics import Metrics
from gateway.core.supervisor import Supervisor
from gateway.settings_modbus import ModbusSection, resolve_map

if TYPE_CHECKING:
    from drivers.modbus.register_maps import RegisterMap


def build_modbus_link(section: ModbusSection, config_dir: Path, *, intake: DeviceIntake, clock: Clock,
                      metrics: Metrics, supervisor: Supervisor) -> DeviceLink | None:
    """The link that owns every configured bus; None without buses. Raises ConfigError for a bad map."""
    if not section.buses:
        return None
    from drivers.modbus.bus import BusConfig, ModbusBus
    from drivers.modbus.link import ModbusLink
    from drivers.modbus.register_maps import load_map
    from drivers.modbus.slaves import LogicalDevice, SlaveConfig

    maps: dict[Path, RegisterMap] = {}
    buses = []
    for bus in section.buses:
        slaves = []
        for device in bus.devices:
            path = resolve_map(device.map, config_dir)
            if path not in maps:
                maps[path] = load_map(path)
            logical = tuple(LogicalDevice(c.id, c.kind, c.address_offset) for c in device.logical())
            slaves.append(SlaveConfig(device.slave, maps[path], logical, device.scan_interval,
                                      device.timeout if device.timeout is not None else bus.timeout))
        config = BusConfig(
            name=bus.label, port=bus.port, baudrate=bus.baudrate, bytesize=bus.bytesize, parity=bus.parity,
            stopbits=bus.stopbits, timeout=bus.timeout, retries=bus.retries, gap=bus.gap_seconds,
            offline_after=bus.offline_after, backoff_max=bus.backoff_max_seconds,
        )
        buses.append(ModbusBus(config, slaves, intake=intake, clock=clock, metrics=metrics))
    return ModbusLink(buses, supervisor)
