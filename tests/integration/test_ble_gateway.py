"""End to end: the gateway with BLE devices in its config and firmware_sim's simulated radio as bleak's
backend -> readings of each BLE device's own logical device in SQLite, presence events, the device list."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware_sim.ble.peripheral import SimulatedPeripheral
from firmware_sim.ble.radio import SimulatedRadio
from firmware_sim.ble.sensors import SimulatedBleSensor

from drivers.ble.link import BleBackends
from gateway.app import Gateway
from gateway.core.models import DeviceState
from gateway.settings import load_settings
from tests.fixtures.gateway import wait_for, write_config

KEY = "231d39c1d7cc1ab1aee224cd096db932"

BLE_CONFIG = f"""
[ble]
adapter = "hci0"
watchdog_seconds = 30
[[ble.devices]]
id = "BT-PLAIN"
mac = "A4:C1:38:00:00:01"
format = "bthome"
[[ble.devices]]
id = "BT-ENC"
mac = "A4:C1:38:00:00:02"
format = "bthome"
bindkey = "{KEY}"
[[ble.devices]]
id = "RUUVI-1"
mac = "C4:7C:8D:00:00:03"
format = "ruuvi"
[[ble.devices]]
id = "ATC-1"
mac = "A4:C1:38:00:00:04"
format = "atc"
[[ble.devices]]
id = "GATT-1"
mac = "D0:00:00:00:00:05"
[[ble.devices.gatt]]
uuid = "2a6e"
metric = "temperature"
type = "int16"
scale = 0.01
mode = "notify"
"""


async def test_ble_sensors_become_readings_of_their_own_devices_in_sqlite(tmp_path: Path) -> None:
    radio = SimulatedRadio(
        [SimulatedBleSensor("A4:C1:38:00:00:01", "bthome", seed=1),
         SimulatedBleSensor("A4:C1:38:00:00:02", "bthome", bindkey=bytes.fromhex(KEY), seed=2),
         SimulatedBleSensor("C4:7C:8D:00:00:03", "ruuvi", seed=3),
         SimulatedBleSensor("A4:C1:38:00:00:04", "atc", seed=4),
         SimulatedBleSensor("11:22:33:44:55:66", "ruuvi", seed=5)],  # a neighbour's tag: counted, not stored
        [SimulatedPeripheral("D0:00:00:00:00:05", seed=6)],
        advert_interval=0.05,
    )
    config = write_config(tmp_path, devices=["AP-01"], extra=BLE_CONFIG, api="enabled = false")
    gateway = Gateway(load_settings(config), ble_backends=BleBackends(radio.scanner_backend, radio.client_backend))
    task = asyncio.create_task(gateway.run(install_signals=False), name="gateway-under-test")
    try:
        await asyncio.wait_for(gateway.ready.wait(), 10)
        ble_ids = ["ATC-1", "BT-ENC", "BT-PLAIN", "GATT-1", "RUUVI-1"]
        def every_device(check: Callable[[DeviceState], bool]) -> bool:
            return all((st := gateway.registry.get(d)) is not None and check(st) for d in ble_ids)

        await wait_for(lambda: every_device(lambda st: st.online and st.last_ts is not None), timeout=10)
        await gateway.writer.flush()
        rows = _query(gateway, "SELECT device_id, metrics FROM readings")
        by_device: dict[str, list[dict[str, float]]] = {}
        for device_id, metrics in rows:
            by_device.setdefault(device_id, []).append(json.loads(metrics))
        assert sorted(by_device) == ble_ids
        for device_id in ble_ids:
            assert all(15.0 <= m["temperature"] <= 30.0 for m in by_device[device_id]), device_id
        assert "encryption_counter" in by_device["BT-ENC"][0]
        assert _query(gateway, "SELECT count(*) FROM quarantine") == [(0,)]
        online = {d for d, in _query(gateway, "SELECT device_id FROM events WHERE type = 'device.online'")}
        assert online == set(ble_ids)
        assert gateway.metrics.value("gateway_ble_unknown_adverts_total") > 0
        kinds = {d["id"]: d["kind"] for d in gateway.registry.summary()}
        assert kinds == {"AP-01": "purifier", "ATC-1": "ble-atc", "BT-ENC": "ble-bthome", "BT-PLAIN": "ble-bthome",
                         "GATT-1": "ble-gatt", "RUUVI-1": "ble-ruuvi"}
        health = gateway.health()["links"]
        assert health["ble:scanner"]["state"] == "up" and health["ble:gatt:GATT-1"]["state"] == "up"
    finally:
        gateway.stop()
        await asyncio.wait_for(task, 10)


def _query(gateway: Gateway, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(gateway.loaded.db_path) as conn:
        return conn.execute(sql).fetchall()
