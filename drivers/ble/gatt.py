"""The GATT client: configured connectable devices are connected, read or subscribed by characteristic UUID.

One supervised task per device (`ble:gatt:{id}`): the supervisor restarts a failed connection with jittered,
doubling back-off and logs once on failure and once on recovery. A shared semaphore allows at most
`max_gatt_connections` connections at once:
* a device with a `notify` characteristic stays connected (holding its slot) and each notification becomes a
  reading; its `read` characteristics are read every `interval_seconds` on the same connection;
* a device with only `read` characteristics holds a slot only while it connects and reads, then disconnects
  until its next read, so more devices than slots take turns.
The device is online while connected (notify) or after a successful read, offline when a connection fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient

from drivers.ble.gatt_values import decode_value
from gateway.core.clock import Clock
from gateway.core.errors import PayloadError
from gateway.core.links import DeviceIntake
from gateway.core.models import Reading
from gateway.core.supervisor import Health

log = structlog.get_logger(__name__)

SOURCE = "ble-gatt"


class GattCharacteristicConfig(Protocol):
    @property
    def uuid(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def scale(self) -> float: ...
    @property
    def mode(self) -> str: ...
    @property
    def interval_seconds(self) -> float: ...


class GattDeviceConfig(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def mac(self) -> str: ...
    @property
    def gatt(self) -> Sequence[GattCharacteristicConfig]: ...


class GattDevice:
    """One connectable device's GATT session; `run` is its supervised runner."""

    def __init__(self, device: GattDeviceConfig, *, intake: DeviceIntake, clock: Clock, slots: asyncio.Semaphore,
                 timeout: float, adapter: str, backend: type[BaseBleakClient] | None = None) -> None:
        self.device_id = device.id
        self.mac = device.mac
        self._reads = [c for c in device.gatt if c.mode == "read"]
        self._notifies = [c for c in device.gatt if c.mode == "notify"]
        self._intake = intake
        self._clock = clock
        self._slots = slots
        self._timeout = timeout
        self._adapter = adapter
        self._backend = backend
        self._interval = min((c.interval_seconds for c in self._reads), default=60.0)
        self._online = False

    async def run(self, health: Health) -> None:
        try:
            if self._notifies:
                await self._stay_connected(health)
            else:
                while True:
                    async with self._slots:
                        await self._read_once()
                    health.up()
                    await asyncio.sleep(self._interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            await self._presence(False, "gatt-failed")
            raise

    def _client(self, disconnected: asyncio.Event | None = None) -> BleakClient:
        def lost(_: BleakClient) -> None:
            if disconnected is not None:
                disconnected.set()

        return BleakClient(self.mac, lost, timeout=self._timeout, bluez={"adapter": self._adapter},
                           backend=self._backend)

    async def _read_once(self) -> None:
        async with self._client() as client:
            await self._read_all(client)

    async def _stay_connected(self, health: Health) -> None:
        disconnected = asyncio.Event()
        async with self._slots, self._client(disconnected) as client:
            for characteristic in self._notifies:
                await client.start_notify(characteristic.uuid, self._on_notify(characteristic))
            await self._presence(True, "connected")
            health.up()
            while not disconnected.is_set():
                if self._reads:
                    await self._read_all(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(disconnected.wait(), self._interval)
        raise ConnectionError(f"{self.mac} disconnected")

    async def _read_all(self, client: BleakClient) -> None:
        metrics: dict[str, float | int | bool] = {}
        for characteristic in self._reads:
            data = bytes(await client.read_gatt_char(characteristic.uuid))
            try:
                metrics[characteristic.metric] = decode_value(data, characteristic.type, characteristic.scale)
            except PayloadError as exc:
                await self._quarantine(characteristic, data, str(exc))
        if metrics:
            await self._presence(True, "read")
            await self._accept(metrics, b"")

    def _on_notify(
        self, characteristic: GattCharacteristicConfig
    ) -> Callable[[BleakGATTCharacteristic, bytearray], Awaitable[None]]:
        async def on_notify(_: BleakGATTCharacteristic, data: bytearray) -> None:
            raw = bytes(data)
            try:
                value = decode_value(raw, characteristic.type, characteristic.scale)
            except PayloadError as exc:
                await self._quarantine(characteristic, raw, str(exc))
                return
            await self._accept({characteristic.metric: value}, raw)

        return on_notify

    async def _accept(self, metrics: dict[str, float | int | bool], raw: bytes) -> None:
        now = self._clock.now()
        self._intake.seen(self.device_id, now)
        try:
            await self._intake.accept(Reading(self.device_id, now, metrics, now))
        except PayloadError as exc:
            await self._intake.quarantine(device_id=self.device_id, source=SOURCE, topic=f"ble/{self.mac}/gatt",
                                          payload=raw, reason=str(exc))

    async def _quarantine(self, characteristic: GattCharacteristicConfig, raw: bytes, reason: str) -> None:
        await self._intake.quarantine(device_id=self.device_id, source=SOURCE,
                                      topic=f"ble/{self.mac}/gatt/{characteristic.uuid}", payload=raw, reason=reason)

    async def _presence(self, online: bool, reason: str) -> None:
        if online != self._online:
            self._online = online
            await self._intake.presence(self.device_id, online, reason)
