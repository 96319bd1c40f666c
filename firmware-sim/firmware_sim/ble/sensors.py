"""Simulated BLE sensors: values that move (bounded random walks), advertised in their firmware's format.

`step(dt)` moves the values on; `advert()` is the advertisement the sensor sends now (a new one after each
step: a new packet id, counter or sequence number); between steps a real sensor repeats its advertisement,
and so does `advert()`. No I/O, no clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from firmware_sim.ble import encoders

SensorFormat = Literal["bthome", "ruuvi", "atc", "pvvx"]


def uuid128(uuid16: int) -> str:
    return f"0000{uuid16:04x}-0000-1000-8000-00805f9b34fb"


@dataclass(frozen=True, slots=True)
class Advert:
    """One advertisement, both as bleak reports it and as raw AD structures (what a hub relays)."""

    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes]
    local_name: str | None
    raw: bytes


@dataclass
class SimulatedBleSensor:
    mac: str
    format: SensorFormat
    bindkey: bytes | None = None
    name: str | None = None
    seed: int | None = None
    temperature: float = 21.0
    humidity: float = 45.0
    battery: int = 90
    counter: int = 0  # packet id / encryption counter / sequence: one more per step
    _rng: random.Random = field(init=False, repr=False)
    _advert: Advert | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def step(self, dt: float = 1.0) -> None:
        rng = self._rng
        self.temperature = min(30.0, max(15.0, self.temperature + rng.gauss(0, 0.05) * dt ** 0.5))
        self.humidity = min(90.0, max(10.0, self.humidity + rng.gauss(0, 0.2) * dt ** 0.5))
        if rng.random() < 0.001 * dt:
            self.battery = max(1, self.battery - 1)
        self.counter += 1
        self._advert = None

    def advert(self) -> Advert:
        if self._advert is None:
            self._advert = self._build()
        return self._advert

    def _build(self) -> Advert:
        service: dict[int, bytes] = {}
        manufacturer: dict[int, bytes] = {}
        t, h = round(self.temperature, 2), round(self.humidity, 2)
        if self.format == "bthome":
            if self.bindkey is None:
                objects = encoders.bthome_objects(packet_id=self.counter, battery=self.battery, temperature=t,
                                                  humidity=h)
            else:  # the encryption counter already orders packets: no packet id
                objects = encoders.bthome_objects(battery=self.battery, temperature=t, humidity=h)
            service[encoders.BTHOME_UUID] = encoders.bthome_service_data(
                objects, mac=self.mac, bindkey=self.bindkey, counter=self.counter)
        elif self.format == "ruuvi":
            manufacturer[encoders.RUUVI_COMPANY] = encoders.ruuvi_df5(
                temperature=t, humidity=h, pressure_hpa=1013.25, acceleration=(0.0, 0.0, 1.0),
                battery_v=2.6 + self.battery / 100, tx_power=4, movement=0, sequence=self.counter, mac=self.mac)
        elif self.bindkey is not None:
            service[encoders.ENVIRONMENTAL_SENSING_UUID] = encoders.pvvx_encrypted(
                mac=self.mac, bindkey=self.bindkey, temperature=t, humidity=h, battery=self.battery,
                counter=self.counter)
        elif self.format == "pvvx":
            service[encoders.ENVIRONMENTAL_SENSING_UUID] = encoders.pvvx_custom(
                mac=self.mac, temperature=t, humidity=h, battery_mv=2500 + 7 * self.battery, battery=self.battery,
                counter=self.counter)
        else:
            service[encoders.ENVIRONMENTAL_SENSING_UUID] = encoders.atc1441(
                mac=self.mac, temperature=t, humidity=round(h), battery=self.battery,
                battery_mv=2500 + 7 * self.battery, counter=self.counter)
        raw = encoders.ad_structures(service_data=service, manufacturer_data=manufacturer, local_name=self.name)
        return Advert({uuid128(u): d for u, d in service.items()}, manufacturer, self.name, raw)
