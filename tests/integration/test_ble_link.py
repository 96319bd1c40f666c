"""The BLE link through the real bleak API with firmware_sim's simulated radio (bleak's public backend=).

Scanner: repeats and replays kept out, minimum interval, unknown advertisers counted, online/offline by
silence, the watchdog restarting a scanner that hears nothing, passive scanning falling back to active.
GATT: notify and read by characteristic UUID, reconnection after a lost connection, at most N connections.
Time: the injected ManualClock; each wait is bounded and waits for a condition.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from firmware_sim.ble.peripheral import HUMIDITY_UUID, TEMPERATURE_UUID, SimulatedPeripheral
from firmware_sim.ble.radio import SimulatedRadio
from firmware_sim.ble.sensors import SimulatedBleSensor

from drivers.ble.link import BleBackends, BleLink, build_ble_link
from drivers.ble.scanner import QUEUE_SIZE
from gateway.core.clock import ManualClock
from gateway.core.device_commands import Ack
from gateway.core.metrics import Metrics
from gateway.core.models import Reading
from gateway.core.supervisor import Supervisor
from gateway.core.tasks import cancel_until_done
from gateway.settings_ble import BleDeviceSettings, BleSection, GattCharacteristicSettings
from tests.fixtures.gateway import wait_for

KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")


@dataclass
class RecordingIntake:
    """A DeviceIntake that keeps what the link handed over."""

    readings: list[Reading] = field(default_factory=list)
    presence_events: list[tuple[str, bool, str]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    seen_at: dict[str, float] = field(default_factory=dict)

    async def accept(self, reading: Reading) -> None:
        self.readings.append(reading)

    async def presence(self, device_id: str, online: bool, reason: str) -> None:
        self.presence_events.append((device_id, online, reason))

    async def acknowledged(self, device_id: str, ack: Ack) -> None:
        raise AssertionError("BLE devices send no acks")

    async def quarantine(self, *, device_id: str | None, source: str | None, topic: str, payload: bytes,
                         reason: str) -> None:
        self.quarantined.append({"device_id": device_id, "source": source, "topic": topic, "reason": reason})

    def command_ready(self, device_id: str) -> None:
        raise AssertionError("BLE devices take no commands")

    def receipt(self) -> asyncio.Future[None] | None:
        return None

    def seen(self, device_id: str, at: float) -> None:
        self.seen_at[device_id] = at

    def of(self, device_id: str) -> list[Reading]:
        return [r for r in self.readings if r.device_id == device_id]


@dataclass
class Harness:
    link: BleLink
    radio: SimulatedRadio
    intake: RecordingIntake
    clock: ManualClock
    supervisor: Supervisor


def _section(devices: Sequence[BleDeviceSettings], **kwargs: Any) -> BleSection:
    return BleSection(devices=list(devices), watchdog_seconds=60, offline_after_seconds=120, **kwargs)


MakeLink = Callable[[BleSection, SimulatedRadio], Awaitable[Harness]]


@pytest.fixture
async def make_link() -> AsyncIterator[MakeLink]:
    """Builds the link as the gateway does (with the simulated radio's backends) and runs it until the test ends."""
    tasks: list[asyncio.Task[None]] = []

    async def start(section: BleSection, radio: SimulatedRadio) -> Harness:
        clock = ManualClock()
        intake = RecordingIntake()
        supervisor = Supervisor(clock=clock, metrics=Metrics(), initial_backoff=0.01, max_backoff=0.05)
        link = build_ble_link(section, intake=intake, clock=clock, metrics=Metrics(), supervisor=supervisor,
                              backends=BleBackends(radio.scanner_backend, radio.client_backend))
        if link.scanner is not None:
            link.scanner._tick = 3600.0  # the test runs the periodic check itself, after moving the clock
        tasks.append(asyncio.create_task(link.run(), name="ble-link"))
        await wait_for(lambda: radio.scanning or not link.scanner)
        return Harness(link, radio, intake, clock, supervisor)

    yield start
    await cancel_until_done(tasks, 5.0)


def _device(device_id: str, mac: str, fmt: Literal["bthome", "ruuvi", "atc", "pvvx"] | None,
            **kwargs: Any) -> BleDeviceSettings:
    return BleDeviceSettings(id=device_id, mac=mac, format=fmt, **kwargs)


async def test_scanner_stores_each_new_advert_once_and_counts_unknown_advertisers(
    make_link: MakeLink
) -> None:
    plain = SimulatedBleSensor("A4:C1:38:00:00:01", "bthome", seed=1)
    ruuvi = SimulatedBleSensor("C4:7C:8D:00:00:02", "ruuvi", seed=2)
    atc = SimulatedBleSensor("A4:C1:38:00:00:03", "atc", seed=3)
    stranger = SimulatedBleSensor("11:22:33:44:55:66", "bthome", seed=4)
    radio = SimulatedRadio([plain, ruuvi, atc, stranger], advert_interval=None)
    section = _section([_device("BT-1", plain.mac, "bthome"), _device("RU-1", ruuvi.mac, "ruuvi"),
                        _device("ATC-1", atc.mac.lower(), "atc")])
    h = await make_link(section, radio)
    for sensor in (plain, ruuvi, atc, stranger):
        radio.emit(sensor)
        radio.emit(sensor)  # sensors repeat their advertisement
    await wait_for(lambda: len(h.intake.readings) == 3)
    plain.step()
    radio.emit(plain)
    radio.emit(plain)
    await wait_for(lambda: len(h.intake.of("BT-1")) == 2)
    assert [len(h.intake.of(d)) for d in ("BT-1", "RU-1", "ATC-1")] == [2, 1, 1]
    first = h.intake.of("BT-1")[0]
    assert first.metrics["temperature"] == round(21.0, 2) and first.metrics["packet_id"] == 0
    assert h.intake.of("RU-1")[0].metrics["pressure"] == 1013.25
    assert h.link.scanner is not None and h.link.scanner.unknown_adverts == 2
    assert not h.intake.quarantined
    assert h.supervisor.health["ble:scanner"].state == "up"


async def test_scanner_refuses_a_replayed_encrypted_advert_with_a_reason(
    make_link: MakeLink
) -> None:
    sensor = SimulatedBleSensor("54:48:E6:8F:80:A5", "bthome", bindkey=KEY, seed=5)
    radio = SimulatedRadio([sensor], advert_interval=None)
    h = await make_link(_section([_device("BT-E", sensor.mac, "bthome", bindkey=KEY.hex())]), radio)
    captured = sensor.advert()
    radio.emit(sensor)
    sensor.step()
    radio.emit(sensor)
    radio.emit(sensor, captured)  # an attacker replays the first advertisement
    await wait_for(lambda: len(h.intake.quarantined) == 1)
    assert [r.metrics["encryption_counter"] for r in h.intake.readings] == [0, 1]
    [refused] = h.intake.quarantined
    assert refused["device_id"] == "BT-E" and "replayed or decreasing" in refused["reason"]
    assert refused["topic"] == "ble/54:48:E6:8F:80:A5/bthome"


async def test_minimum_interval_drops_readings_in_between(make_link: MakeLink) -> None:
    sensor = SimulatedBleSensor("A4:C1:38:00:00:07", "pvvx", seed=7)
    radio = SimulatedRadio([sensor], advert_interval=None)
    h = await make_link(_section([_device("PV-1", sensor.mac, "pvvx", min_interval_seconds=30)]), radio)
    for _ in range(3):  # three new readings within 20 s
        radio.emit(sensor)
        sensor.step()
        h.clock.advance(10)
    radio.emit(sensor)  # 30 s after the first
    await wait_for(lambda: len(h.intake.readings) == 2)
    assert [r.metrics["counter"] for r in h.intake.readings] == [0, 3]


async def test_silent_device_goes_offline_and_comes_back(make_link: MakeLink) -> None:
    sensor = SimulatedBleSensor("A4:C1:38:00:00:08", "bthome", seed=8)
    radio = SimulatedRadio([sensor], advert_interval=None)
    h = await make_link(_section([_device("BT-8", sensor.mac, "bthome")]), radio)
    scanner = h.link.scanner
    assert scanner is not None
    radio.emit(sensor)
    await wait_for(lambda: len(h.intake.readings) == 1)
    await scanner.check()
    h.clock.advance(119)
    await scanner.check()
    h.clock.advance(1)  # offline_after_seconds = 120 without a word
    await scanner.check()
    sensor.step()
    radio.emit(sensor)
    await wait_for(lambda: len(h.intake.readings) == 2)
    await scanner.check()
    assert h.intake.presence_events == [("BT-8", True, "advertising"), ("BT-8", False, "silent"),
                                        ("BT-8", True, "advertising")]


async def test_watchdog_restarts_a_scanner_that_hears_nothing(
    make_link: MakeLink
) -> None:
    sensor = SimulatedBleSensor("A4:C1:38:00:00:09", "bthome", seed=9)
    radio = SimulatedRadio([sensor], advert_interval=None)
    h = await make_link(_section([_device("BT-9", sensor.mac, "bthome")]), radio)
    await wait_for(lambda: radio.scanner_starts == 1)
    scanner = h.link.scanner
    assert scanner is not None
    radio.silent = True  # the adapter wedges: scanning, hearing nothing
    radio.emit(sensor)
    h.clock.advance(59)
    await scanner.check()
    assert radio.scanner_starts == 1
    h.clock.advance(1)
    await scanner.check()
    await wait_for(lambda: radio.scanner_starts == 2 and radio.scanning)
    assert scanner.restarts == 1
    radio.silent = False
    radio.emit(sensor)
    await wait_for(lambda: len(h.intake.readings) == 1)


async def test_passive_scanning_falls_back_to_active_where_bluez_refuses_it(
    make_link: MakeLink
) -> None:
    sensor = SimulatedBleSensor("A4:C1:38:00:00:0A", "ruuvi", seed=10)
    radio = SimulatedRadio([sensor], advert_interval=None, passive_supported=False)
    h = await make_link(_section([_device("RU-A", sensor.mac, "ruuvi")]), radio)
    assert radio.scanning_modes == ["active"]
    radio.emit(sensor)
    await wait_for(lambda: len(h.intake.readings) == 1)


async def test_passive_scanning_asks_bluez_for_the_configured_formats_only(
    make_link: MakeLink
) -> None:
    radio = SimulatedRadio([], advert_interval=None)
    section = _section([_device("BT-1", "A4:C1:38:00:00:01", "bthome"), _device("RU-1", "C4:7C:8D:00:00:02", "ruuvi")])
    await make_link(section, radio)
    assert radio.scanning_modes == ["passive"]
    [scanner] = radio._scanners
    patterns = scanner.backend_args["bluez"]["or_patterns"]  # type: ignore[attr-defined]
    assert sorted((p.ad_data_type, p.content_of_pattern) for p in patterns) == [(0x16, b"\xd2\xfc"),
                                                                                  (0xFF, b"\x99\x04")]
    assert scanner.backend_args["bluez"]["adapter"] == "hci0"  # type: ignore[attr-defined]


def _gatt_device(device_id: str, mac: str, *characteristics: GattCharacteristicSettings) -> BleDeviceSettings:
    return BleDeviceSettings(id=device_id, mac=mac, gatt=list(characteristics))


async def test_gatt_notify_and_read_by_uuid_and_reconnect_after_a_lost_connection(
    make_link: MakeLink
) -> None:
    peripheral = SimulatedPeripheral("D0:00:00:00:00:01", seed=11)
    radio = SimulatedRadio([], [peripheral], advert_interval=None)
    device = _gatt_device(
        "GATT-1", peripheral.mac,
        GattCharacteristicSettings(uuid="2a6e", metric="temperature", type="int16", scale=0.01, mode="notify"),
        GattCharacteristicSettings(uuid=HUMIDITY_UUID, metric="humidity", type="uint16", scale=0.01,
                                   interval_seconds=3600),
        GattCharacteristicSettings(uuid="2a19", metric="battery", type="uint8", interval_seconds=3600),
    )
    h = await make_link(_section([device]), radio)
    await wait_for(lambda: bool(peripheral.subscribers.get(TEMPERATURE_UUID)))
    await wait_for(lambda: len(h.intake.readings) == 1)
    assert h.intake.readings[0].metrics == {"humidity": 40.0, "battery": 80}
    peripheral.step()
    await wait_for(lambda: len(h.intake.readings) == 2)
    assert h.intake.readings[1].metrics == {"temperature": round(peripheral.temperature, 2)}
    radio.drop_connection(peripheral.mac)  # out of range
    await wait_for(lambda: radio.connects == 2 and bool(peripheral.subscribers.get(TEMPERATURE_UUID)))
    assert ("GATT-1", False, "gatt-failed") in h.intake.presence_events
    assert h.intake.presence_events[-1] == ("GATT-1", True, "connected")
    assert h.supervisor.health["ble:gatt:GATT-1"].restarts == 1


async def test_gatt_keeps_to_the_connection_limit_and_unreachable_devices_do_not_block_others(
    make_link: MakeLink
) -> None:
    peripherals = [SimulatedPeripheral(f"D0:00:00:00:00:1{i}", seed=i) for i in range(4)]
    radio = SimulatedRadio([], peripherals, advert_interval=None)
    battery = GattCharacteristicSettings(uuid="2a19", metric="battery", type="uint8", interval_seconds=0.05)
    devices = [_gatt_device(f"G-{i}", p.mac, battery) for i, p in enumerate(peripherals)]
    devices.append(_gatt_device("G-away", "D0:00:00:00:00:FF", battery))  # never in range
    h = await make_link(_section(devices, max_gatt_connections=2), radio)
    await wait_for(lambda: all(len(h.intake.of(f"G-{i}")) >= 2 for i in range(4)))
    assert radio.most_connections == 2
    assert h.supervisor.health["ble:gatt:G-away"].state == "failing"


async def test_a_forged_advert_does_not_keep_a_silent_encrypted_device_online(make_link: MakeLink) -> None:
    sensor = SimulatedBleSensor("54:48:E6:8F:80:A6", "bthome", bindkey=KEY, seed=12)
    forger = SimulatedBleSensor("54:48:E6:8F:80:A6", "bthome", bindkey=bytes(16), seed=13)  # wrong key
    radio = SimulatedRadio([sensor], advert_interval=None)
    h = await make_link(_section([_device("BT-F", sensor.mac, "bthome", bindkey=KEY.hex())]), radio)
    scanner = h.link.scanner
    assert scanner is not None
    radio.emit(sensor)
    await wait_for(lambda: len(h.intake.readings) == 1)
    await scanner.check()
    h.clock.advance(100)
    forger.step()
    radio.emit(forger)
    await wait_for(lambda: len(h.intake.quarantined) == 1)
    h.clock.advance(20)  # 120 s after the last authentic advert
    await scanner.check()
    assert h.intake.presence_events == [("BT-F", True, "advertising"), ("BT-F", False, "silent")]
    assert "decryption failed" in h.intake.quarantined[0]["reason"]


async def test_gatt_value_that_does_not_fit_its_type_is_quarantined_and_the_rest_stored(make_link: MakeLink) -> None:
    peripheral = SimulatedPeripheral("D0:00:00:00:00:21", seed=21)
    radio = SimulatedRadio([], [peripheral], advert_interval=None)
    device = _gatt_device(
        "GATT-Q", peripheral.mac,
        GattCharacteristicSettings(uuid="2a19", metric="battery", type="uint16", interval_seconds=3600),  # 1 byte
        GattCharacteristicSettings(uuid="2a6f", metric="humidity", type="uint16", scale=0.01, interval_seconds=3600),
    )
    h = await make_link(_section([device]), radio)
    await wait_for(lambda: len(h.intake.readings) == 1 and len(h.intake.quarantined) == 1)
    assert h.intake.readings[0].metrics == {"humidity": 40.0}
    [refused] = h.intake.quarantined
    assert refused["topic"] == "ble/D0:00:00:00:00:21/gatt/00002a19-0000-1000-8000-00805f9b34fb"
    assert refused["reason"] == "GATT value of 1 bytes, a uint16 needs 2"


async def test_a_beacon_heard_directly_and_relayed_by_a_hub_is_stored_once(make_link: MakeLink) -> None:
    """The hub demultiplexer decodes with the same BleAdvertDecoder (gateway.ble_adverts) as the scanner."""
    sensor = SimulatedBleSensor("54:48:E6:8F:80:B1", "bthome", bindkey=KEY, seed=14)
    radio = SimulatedRadio([sensor], advert_interval=None)
    h = await make_link(_section([_device("BT-H", sensor.mac, "bthome", bindkey=KEY.hex())]), radio)
    radio.emit(sensor)
    await wait_for(lambda: len(h.intake.readings) == 1)
    relayed = sensor.advert().raw  # the same advertisement, as a hub relays it
    assert h.link.decoder.decode_raw(sensor.mac.lower(), relayed, h.clock.now() + 1) is None
    assert h.link.decoder.is_configured(sensor.mac)  # None here means "nothing new", not "unmapped"
    sensor.step()  # the hub hears the next one first; the scanner then hears it too
    reading = h.link.decoder.decode_raw(sensor.mac, sensor.advert().raw, h.clock.now() + 2)
    assert reading is not None and reading.device_id == "BT-H" and reading.metrics["encryption_counter"] == 1
    radio.emit(sensor)
    assert h.link.scanner is not None and h.link.decoder.lookup(sensor.mac) is not None
    await wait_for(lambda: h.link.decoder.lookup(sensor.mac).repeats == 2)  # type: ignore[union-attr]
    assert len(h.intake.readings) == 1 and not h.intake.quarantined


async def test_adverts_beyond_the_queue_bound_are_dropped_and_counted(make_link: MakeLink) -> None:
    sensor = SimulatedBleSensor("A4:C1:38:00:00:31", "atc", seed=31)
    radio = SimulatedRadio([sensor], advert_interval=None)
    h = await make_link(_section([_device("ATC-Q", sensor.mac, "atc")]), radio)
    release = asyncio.Event()
    accept = h.intake.accept

    async def slow_accept(reading: Reading) -> None:
        await release.wait()  # the store is stuck
        await accept(reading)

    h.intake.accept = slow_accept  # type: ignore[method-assign]
    for _ in range(QUEUE_SIZE + 11):
        sensor.step()
        radio.emit(sensor)
    scanner = h.link.scanner
    assert scanner is not None
    assert scanner.dropped == 11  # heard in one go: QUEUE_SIZE wait for the intake, the rest are dropped
    release.set()
    await wait_for(lambda: len(h.intake.readings) == QUEUE_SIZE)
