"""A simulated connectable BLE peripheral: the Environmental Sensing service (temperature 0x2A6E and
humidity 0x2A6F, read and notify) and the Battery service (battery level 0x2A19, read). No I/O."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from firmware_sim.ble.sensors import uuid128

TEMPERATURE_UUID = uuid128(0x2A6E)
HUMIDITY_UUID = uuid128(0x2A6F)
BATTERY_LEVEL_UUID = uuid128(0x2A19)
ENVIRONMENTAL_SENSING_SERVICE = uuid128(0x181A)
BATTERY_SERVICE = uuid128(0x180F)

# service uuid -> [(characteristic uuid, properties)]
SERVICES: dict[str, list[tuple[str, list[str]]]] = {
    ENVIRONMENTAL_SENSING_SERVICE: [(TEMPERATURE_UUID, ["read", "notify"]), (HUMIDITY_UUID, ["read", "notify"])],
    BATTERY_SERVICE: [(BATTERY_LEVEL_UUID, ["read"])],
}

Subscriber = Callable[[bytearray], None]


@dataclass
class SimulatedPeripheral:
    mac: str
    name: str = "sim-gatt"
    seed: int | None = None
    connectable: bool = True
    temperature: float = 22.0
    humidity: float = 40.0
    battery: int = 80
    subscribers: dict[str, list[Subscriber]] = field(default_factory=dict)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def value(self, uuid: str) -> bytes:
        if uuid == TEMPERATURE_UUID:
            return struct.pack("<h", round(self.temperature * 100))
        if uuid == HUMIDITY_UUID:
            return struct.pack("<H", round(self.humidity * 100))
        if uuid == BATTERY_LEVEL_UUID:
            return bytes((self.battery,))
        raise KeyError(uuid)

    def step(self, dt: float = 1.0) -> None:
        """Values move on, and every subscriber hears the new temperature and humidity."""
        self.temperature = min(30.0, max(15.0, self.temperature + self._rng.gauss(0, 0.05) * dt ** 0.5))
        self.humidity = min(90.0, max(10.0, self.humidity + self._rng.gauss(0, 0.2) * dt ** 0.5))
        self.notify()

    def notify(self) -> None:
        for uuid, callbacks in self.subscribers.items():
            data = bytearray(self.value(uuid))
            for callback in list(callbacks):
                callback(data)
