"""Device kinds -> their drivers, imported only when a configured device needs one.

A new device kind is one module in drivers/ and one line here (or a `register()` call from a plug-in).
Config validation asks `known_kinds()`; the composition root asks `load()` for the kinds it has.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable

from gateway.core.links import DeviceDriver

# kind -> "module:Class" of a driver whose constructor takes no arguments
_BUILTIN: dict[str, str] = {
    "purifier": "drivers.purifier:PurifierDriver",
    "sensor": "drivers.sensor:SensorDriver",
    "modbus-sensor": "drivers.modbus.driver:ModbusSensorDriver",
    "modbus-purifier": "drivers.modbus.driver:ModbusPurifierDriver",
    "modbus-switch": "drivers.modbus.driver:ModbusSwitchDriver",
    "hub": "drivers.hub:HubDriver",
    # BLE sensors ([[ble.devices]], kind from their advertisement format; gateway/settings_ble.py)
    "ble-bthome": "drivers.ble.driver:BthomeDriver",
    "ble-ruuvi": "drivers.ble.driver:RuuviDriver",
    "ble-atc": "drivers.ble.driver:AtcDriver",
    "ble-pvvx": "drivers.ble.driver:PvvxDriver",
    "ble-gatt": "drivers.ble.driver:BleSensorDriver",
}
_registered: dict[str, Callable[[], DeviceDriver]] = {}


def register(kind: str, factory: Callable[[], DeviceDriver]) -> None:
    """Add a device kind from outside this package (a plug-in, a test)."""
    _registered[kind] = factory


def unregister(kind: str) -> None:
    _registered.pop(kind, None)


def known_kinds() -> list[str]:
    return sorted({*_BUILTIN, *_registered})


def load(kind: str) -> DeviceDriver:
    factory = _registered.get(kind)
    if factory is not None:
        return factory()
    target = _BUILTIN.get(kind)
    if target is None:
        raise KeyError(f"unknown device kind {kind!r} (known: {', '.join(known_kinds())})")
    module, _, name = target.partition(":")
    driver: DeviceDriver = getattr(importlib.import_module(module), name)()
    return driver


def load_all(kinds: Iterable[str]) -> dict[str, DeviceDriver]:
    """The drivers of these kinds, one instance per kind."""
    return {kind: load(kind) for kind in sorted(set(kinds))}
