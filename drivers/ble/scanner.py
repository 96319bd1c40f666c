"""The BLE scanner: bleak's BleakScanner on the configured adapter -> readings of the configured devices.

The detection callback (synchronous, on the event loop) looks the advertiser up by MAC, decodes the device's
format (drivers/ble/formats.py drops repeats, throttles to the minimum interval, refuses replays) and puts the
Reading, or the refused payload with its reason, on a bounded queue that one task hands to the DeviceIntake.
Overflow policy: when the intake falls 1,000 items behind, new adverts are dropped and counted
(`gateway_ble_dropped_total`); a sensor repeats its advertisement, so a dropped one is usually heard again.

Unknown advertisers are counted, not stored. Every second the scanner checks, on the injected clock, which
configured devices came back (online) or fell silent for `offline_after_seconds` (offline, with an event),
and whether the adapter heard nothing at all for `watchdog_seconds`: then it stops and starts the scanner
again (adapters do wedge). Passive scanning is asked for with BlueZ or-patterns of the configured formats;
where BlueZ refuses it the scanner falls back to active scanning, logged once.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import structlog
from bleak import BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from drivers.ble.hub_adverts import BleAdvertDecoder
from gateway.core.clock import Clock
from gateway.core.errors import PayloadError, StoreClosedError
from gateway.core.links import DeviceIntake
from gateway.core.metrics import Metrics
from gateway.core.models import Reading
from gateway.core.supervisor import Health
from gateway.core.tasks import cancel_until_done

log = structlog.get_logger(__name__)

QUEUE_SIZE = 1000
SOURCE = "ble-scanner"

# (device id, topic for the quarantine row, payload, the Reading or the refusal reason)
_Item = tuple[str, str, bytes, Reading | str]


class BleScanner:
    def __init__(
        self,
        *,
        decoder: BleAdvertDecoder,
        intake: DeviceIntake,
        clock: Clock,
        metrics: Metrics,
        adapter: str,
        scanning_mode: Literal["passive", "active"],
        watchdog_seconds: float,
        offline_after_seconds: float,
        backend: type[BaseBleakScanner] | None = None,
        tick_seconds: float = 1.0,
    ) -> None:
        self._decoder = decoder
        self._intake = intake
        self._clock = clock
        self._adapter = adapter
        self._mode = scanning_mode
        self._watchdog = watchdog_seconds
        self._offline_after = offline_after_seconds
        self._backend = backend
        self._tick = tick_seconds
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(QUEUE_SIZE)
        self._restart = asyncio.Event()
        self._last_heard = clock.monotonic()
        self._online: set[str] = set()
        self.unknown_adverts = 0
        self.dropped = 0
        self.restarts = 0
        metrics.gauge_callback("gateway_ble_unknown_adverts_total", lambda: self.unknown_adverts,
                               "adverts heard from advertisers that are not configured (counted, not stored)")
        metrics.gauge_callback("gateway_ble_dropped_total", lambda: self.dropped,
                               "adverts dropped because the intake fell behind")
        metrics.gauge_callback("gateway_ble_repeats_total", lambda: sum(d.repeats for d in decoder.devices()),
                               "adverts not stored twice (the same advert, an older packet id, the minimum interval)")
        metrics.gauge_callback("gateway_ble_scanner_restarts_total", lambda: self.restarts,
                               "scanner restarts by the watchdog (nothing heard for watchdog_seconds)")

    async def run(self, health: Health) -> None:
        """Scan until cancelled; raises when the adapter cannot scan (the supervisor restarts it) with that
        error itself, not wrapped in a group, so the supervisor's one log line names it."""
        parts = [asyncio.create_task(self._scan(health), name="ble-scan"),
                 asyncio.create_task(self._deliver(), name="ble-deliver"),
                 asyncio.create_task(self._watch(), name="ble-watch")]
        try:
            done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_until_done(parts, 5.0)
        for task in done:
            task.result()  # the part's error
        raise RuntimeError("a part of the BLE scanner ended on its own")

    # --- scanning -----------------------------------------------------------------------------------

    async def _scan(self, health: Health) -> None:
        while True:
            scanner = await self._start_scanner()
            self._last_heard = self._clock.monotonic()
            health.up()
            try:
                await self._restart.wait()
            finally:
                self._restart.clear()
                await scanner.stop()
            self.restarts += 1
            log.warning("ble.scanner_restarted", reason="nothing heard", silent_for_s=self._watchdog,
                        adapter=self._adapter)

    async def _start_scanner(self) -> BleakScanner:
        if self._mode == "passive":
            try:
                scanner = self._scanner("passive")
                await scanner.start()
                return scanner
            except BleakError as exc:
                log.warning("ble.passive_scanning_unavailable", adapter=self._adapter, error=str(exc),
                            using="active scanning")
                self._mode = "active"
        scanner = self._scanner("active")
        await scanner.start()
        return scanner

    def _scanner(self, mode: Literal["passive", "active"]) -> BleakScanner:
        bluez: dict[str, Any] = {"adapter": self._adapter}
        if mode == "passive":
            bluez["or_patterns"] = self._or_patterns()
        return BleakScanner(self._on_advert, scanning_mode=mode, bluez=bluez,  # type: ignore[arg-type]
                            backend=self._backend)

    def _or_patterns(self) -> list[OrPattern]:
        patterns = set()
        for device in self._decoder.devices():
            kind = (AdvertisementDataType.SERVICE_DATA_UUID16 if device.spec.source == "service"
                    else AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA)
            patterns.add(OrPattern(0, kind, device.spec.key.to_bytes(2, "little")))
        return sorted(patterns)

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """bleak's detection callback: the per-advert hot path."""
        self._last_heard = self._clock.monotonic()
        decoder = self._decoder.lookup(device.address)
        if decoder is None:
            self.unknown_adverts += 1
            return
        payload = decoder.payload_of_bleak(adv.service_data, adv.manufacturer_data)
        if payload is None:
            return  # a scan response or another beacon of the device: nothing of its format
        now = self._clock.now()
        try:
            reading: Reading | str | None = decoder.decode(payload, now)
        except PayloadError as exc:
            reading = str(exc)
        if reading is None:
            return
        try:
            self._queue.put_nowait((decoder.device_id, f"ble/{decoder.mac}/{decoder.format}", payload, reading))
        except asyncio.QueueFull:
            self.dropped += 1

    # --- handing over -------------------------------------------------------------------------------

    async def _deliver(self) -> None:
        intake = self._intake
        while True:
            device_id, topic, payload, item = await self._queue.get()
            try:
                if isinstance(item, Reading):
                    intake.seen(device_id, item.received_at)
                    try:
                        await intake.accept(item)
                    except PayloadError as exc:
                        await intake.quarantine(device_id=device_id, source=SOURCE, topic=topic, payload=payload,
                                                reason=str(exc))
                else:
                    await intake.quarantine(device_id=device_id, source=SOURCE, topic=topic, payload=payload,
                                            reason=item)
            except StoreClosedError:
                return  # shutting down

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            await self.check()

    async def check(self) -> None:
        """Presence of each configured device, and the watchdog (run every tick; tests call it directly)."""
        now = self._clock.now()
        for device in self._decoder.devices():
            heard = device.heard_at is not None and now - device.heard_at < self._offline_after
            if heard and device.device_id not in self._online:
                self._online.add(device.device_id)
                await self._intake.presence(device.device_id, True, "advertising")
            elif not heard and device.device_id in self._online:
                self._online.discard(device.device_id)
                await self._intake.presence(device.device_id, False, "silent")
        if self._clock.monotonic() - self._last_heard >= self._watchdog:
            self._last_heard = self._clock.monotonic()
            self._restart.set()
