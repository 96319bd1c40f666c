"""The BLE link (transport "ble"): the scanner and the GATT sessions of the configured BLE devices.

`build_ble_link` builds it (drivers/ble/wiring.py calls it for the composition root). The link's `run` hosts
the scanner (`ble:scanner`) and one GATT session per connectable device (`ble:gatt:{id}`), each
under the gateway's supervisor, so a wedged adapter and an unreachable peripheral restart on their own and
show in /health. BLE sensors take no commands. `backends` swaps bleak's BlueZ backend for another one through
bleak's public `backend=` argument (the simulated radio of firmware_sim in the demo and tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from bleak.backends.client import BaseBleakClient
from bleak.backends.scanner import BaseBleakScanner

from drivers.ble.formats import BleDeviceConfig
from drivers.ble.gatt import GattCharacteristicConfig, GattDevice
from drivers.ble.hub_adverts import BleAdvertDecoder
from drivers.ble.scanner import BleScanner
from gateway.core.clock import Clock
from gateway.core.device_commands import Ack, OutgoingCommand
from gateway.core.links import DeviceIntake, LinkError
from gateway.core.metrics import Metrics
from gateway.core.supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class BleBackends:
    """bleak backends to use instead of the platform's (None: BlueZ on Linux)."""

    scanner: type[BaseBleakScanner] | None = None
    client: type[BaseBleakClient] | None = None


class BleDeviceSettings(BleDeviceConfig, Protocol):
    @property
    def gatt(self) -> Sequence[GattCharacteristicConfig]: ...


class BleSectionConfig(Protocol):
    """gateway/settings_ble.py's BleSection, as the link reads it."""

    @property
    def adapter(self) -> str: ...
    @property
    def scanning_mode(self) -> Literal["passive", "active"]: ...
    @property
    def watchdog_seconds(self) -> float: ...
    @property
    def offline_after_seconds(self) -> float: ...
    @property
    def max_gatt_connections(self) -> int: ...
    @property
    def gatt_timeout_seconds(self) -> float: ...
    @property
    def devices(self) -> Sequence[BleDeviceSettings]: ...


class BleLink:
    name = "ble"

    def __init__(self, *, decoder: BleAdvertDecoder, scanner: BleScanner | None, gatt: Sequence[GattDevice],
                 supervisor: Supervisor) -> None:
        self.decoder = decoder
        self.scanner = scanner
        self.gatt = list(gatt)
        self._supervisor = supervisor

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.scanner is not None:
                self._supervisor.start(tg, "ble:scanner", self.scanner.run)
            for device in self.gatt:
                self._supervisor.start(tg, f"ble:gatt:{device.device_id}", device.run)
            await asyncio.Event().wait()  # the parts run until the link is cancelled

    def command_ready(self, device_id: str) -> bool:
        return False

    async def send(self, command: OutgoingCommand) -> Ack | None:
        raise LinkError(f"BLE sensor {command.device_id!r} takes no commands")


def build_ble_link(section: BleSectionConfig, *, intake: DeviceIntake, clock: Clock, metrics: Metrics,
                   supervisor: Supervisor, backends: BleBackends | None = None,
                   decoder: BleAdvertDecoder | None = None) -> BleLink:
    """The link of the configured BLE devices. `decoder`: the BleAdvertDecoder to share with the hub
    demultiplexer (built from `section.devices` when not given)."""
    backends = backends or BleBackends()
    decoder = decoder if decoder is not None else BleAdvertDecoder(section.devices)
    scanner = None
    if len(decoder):
        scanner = BleScanner(decoder=decoder, intake=intake, clock=clock, metrics=metrics, adapter=section.adapter,
                             scanning_mode=section.scanning_mode, watchdog_seconds=section.watchdog_seconds,
                             offline_after_seconds=section.offline_after_seconds, backend=backends.scanner)
    slots = asyncio.Semaphore(section.max_gatt_connections)
    gatt = [GattDevice(d, intake=intake, clock=clock, slots=slots, timeout=section.gatt_timeout_seconds,
                       adapter=section.adapter, backend=backends.client)
            for d in section.devices if d.gatt]
    return BleLink(decoder=decoder, scanner=scanner, gatt=gatt, supervisor=supervisor)
