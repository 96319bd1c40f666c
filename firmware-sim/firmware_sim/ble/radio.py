"""The simulated radio: bleak backends (scanner and GATT client) bound to simulated sensors and peripherals.

    radio = SimulatedRadio(sensors=[...], peripherals=[...])
    BleakScanner(callback, backend=radio.scanner_backend)      # bleak's public backend= argument
    BleakClient(address, backend=radio.client_backend)

With `advert_interval` set, a started scanner hears every sensor once per interval (each sensor steps on and
its advertisement is heard twice, as real sensors repeat theirs), and subscribed peripherals notify at the same
pace; with None, tests deliver by hand (`emit`, `peripheral.step`). `silent` makes a running scanner hear
nothing (a wedged adapter); `passive_supported=False` refuses passive scanning like a BlueZ without
advertisement monitors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from bleak.args import SizedBuffer
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError

from firmware_sim.ble.peripheral import SERVICES, SimulatedPeripheral
from firmware_sim.ble.sensors import Advert, SimulatedBleSensor


class SimulatedRadio:
    def __init__(self, sensors: Iterable[SimulatedBleSensor] = (), peripherals: Iterable[SimulatedPeripheral] = (),
                 *, advert_interval: float | None = 1.0, passive_supported: bool = True, rssi: int = -60) -> None:
        self.sensors = list(sensors)
        self.peripherals = {p.mac.upper(): p for p in peripherals}
        self.advert_interval = advert_interval
        self.passive_supported = passive_supported
        self.rssi = rssi
        self.silent = False
        self.scanner_starts = 0
        self.scanning_modes: list[str] = []  # the mode of each started scanner
        self.connections = 0
        self.most_connections = 0
        self.connects = 0
        self.clients: list[_SimulatedClient] = []
        self._scanners: set[_SimulatedScanner] = set()
        self._ticker: asyncio.Task[None] | None = None
        radio = self

        class SimulatedScanner(_SimulatedScanner):
            _radio = radio

        class SimulatedClient(_SimulatedClient):
            _radio = radio

        self.scanner_backend: type[BaseBleakScanner] = SimulatedScanner
        self.client_backend: type[BaseBleakClient] = SimulatedClient

    @property
    def scanning(self) -> bool:
        return bool(self._scanners)

    def emit(self, sensor: SimulatedBleSensor, advert: Advert | None = None) -> None:
        """Every running scanner hears `sensor` now (its current advertisement unless one is given)."""
        if self.silent:
            return
        advert = advert or sensor.advert()
        for scanner in list(self._scanners):
            scanner.hear(sensor.mac, advert, self.rssi)

    def tick(self, dt: float) -> None:
        for sensor in self.sensors:
            sensor.step(dt)
            self.emit(sensor)
            self.emit(sensor)
        for peripheral in self.peripherals.values():
            peripheral.step(dt)

    def drop_connection(self, mac: str) -> None:
        """The peripheral goes out of range: its clients are disconnected without asking."""
        for client in list(self.clients):
            if client.address.upper() == mac.upper() and client.is_connected:
                client.lost()

    def _scanner_started(self, scanner: _SimulatedScanner) -> None:
        self._scanners.add(scanner)
        self.scanner_starts += 1
        if self.advert_interval is not None and self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_forever(self.advert_interval), name="sim-radio")

    def _scanner_stopped(self, scanner: _SimulatedScanner) -> None:
        self._scanners.discard(scanner)
        if not self._scanners and self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.tick(interval)


class _SimulatedScanner(BaseBleakScanner):
    _radio: SimulatedRadio

    def __init__(self, detection_callback: AdvertisementDataCallback | None, service_uuids: list[str] | None,
                 scanning_mode: str = "active", **kwargs: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self.scanning_mode = scanning_mode
        self.backend_args = kwargs

    async def start(self) -> None:
        if self.scanning_mode == "passive" and not self._radio.passive_supported:
            raise BleakError("passive scanning mode requires bluez or_patterns (advertisement monitor unavailable)")
        self.seen_devices = {}
        self._radio.scanning_modes.append(self.scanning_mode)
        self._radio._scanner_started(self)

    async def stop(self) -> None:
        self._radio._scanner_stopped(self)

    def hear(self, mac: str, advert: Advert, rssi: int) -> None:
        data = AdvertisementData(
            local_name=advert.local_name, manufacturer_data=dict(advert.manufacturer_data),
            service_data=dict(advert.service_data), service_uuids=list(advert.service_data), tx_power=None,
            rssi=rssi, platform_data=(),
        )
        if not self.is_allowed_uuid(data.service_uuids):
            return
        device = self.create_or_update_device(mac, mac, advert.local_name, None, data)
        self.call_detection_callbacks(device, data)


class _SimulatedClient(BaseBleakClient):
    _radio: SimulatedRadio

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=kwargs.pop("disconnected_callback", None),
                         timeout=kwargs.pop("timeout", 10.0))
        self._peripheral: SimulatedPeripheral | None = None
        self._subscriptions: list[tuple[str, NotifyCallback]] = []
        self._radio.clients.append(self)

    @property
    def name(self) -> str:
        return self._peripheral.name if self._peripheral else self.address

    @property
    def mtu_size(self) -> int:
        return 23

    @property
    def is_connected(self) -> bool:
        return self._peripheral is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        await asyncio.sleep(0)  # a real connection takes a round trip
        peripheral = self._radio.peripherals.get(self.address.upper())
        if peripheral is None or not peripheral.connectable:
            raise BleakDeviceNotFoundError(self.address, f"Device with address {self.address} was not found.")
        self._peripheral = peripheral
        self.services = _services()
        radio = self._radio
        radio.connects += 1
        radio.connections += 1
        radio.most_connections = max(radio.most_connections, radio.connections)

    async def disconnect(self) -> None:
        self._close()

    def lost(self) -> None:
        self._close()
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    def _close(self) -> None:
        peripheral, self._peripheral = self._peripheral, None
        if peripheral is None:
            return
        for uuid, callback in self._subscriptions:
            with contextlib.suppress(ValueError):
                peripheral.subscribers[uuid].remove(callback)
        self._subscriptions.clear()
        self._radio.connections -= 1
        self._radio.clients.remove(self)

    def _connected(self) -> SimulatedPeripheral:
        if self._peripheral is None:
            raise BleakError("Not connected")
        return self._peripheral

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False,
                             **kwargs: Any) -> bytearray:
        await asyncio.sleep(0)
        return bytearray(self._connected().value(characteristic.uuid))

    async def start_notify(self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback,
                           **kwargs: Any) -> None:
        peripheral = self._connected()
        if "notify" not in characteristic.properties:
            raise BleakError(f"{characteristic.uuid} does not notify")
        peripheral.subscribers.setdefault(characteristic.uuid, []).append(callback)
        self._subscriptions.append((characteristic.uuid, callback))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        callbacks = self._connected().subscribers.get(characteristic.uuid, [])
        for uuid, callback in [s for s in self._subscriptions if s[0] == characteristic.uuid]:
            self._subscriptions.remove((uuid, callback))
            with contextlib.suppress(ValueError):
                callbacks.remove(callback)

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def unpair(self) -> None:
        return None

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: SizedBuffer,
                              response: bool) -> None:
        raise BleakError("the simulated peripheral has no writable characteristics")

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False,
                                   **kwargs: Any) -> bytearray:
        raise BleakError("the simulated peripheral has no descriptors")

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        raise BleakError("the simulated peripheral has no descriptors")


def _services() -> BleakGATTServiceCollection:
    collection = BleakGATTServiceCollection()
    handle = 1
    for service_uuid, characteristics in SERVICES.items():
        service = BleakGATTService(None, handle, service_uuid)
        collection.add_service(service)
        handle += 1
        for uuid, properties in characteristics:
            collection.add_characteristic(
                BleakGATTCharacteristic(None, handle, uuid, properties, lambda: 20, service)  # type: ignore[arg-type]
            )
            handle += 2
    return collection
