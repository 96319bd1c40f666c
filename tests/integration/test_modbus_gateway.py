"""End to end: the gateway with a Modbus bus on a pty, simulated slaves behind it; readings land in SQLite,
and a fan-speed command over the REST API is written and acknowledged by its read-back."""

from __future__ import annotations

import json

import aiohttp

from tests.fixtures.gateway import GatewayFactory, wait_for
from tests.fixtures.modbus import SimLine

DEVICES = {"co2-1": 1, "pm-2": 2, "meter-3": 3, "purifier-4": 4}
MAPS = {1: "senseair_s8.toml", 2: "siemens_qsa2700.toml", 3: "eastron_sdm630.toml", 4: "rs485_purifier.toml"}


def modbus_config(port: str) -> str:
    lines = ["[[modbus.buses]]", f'port = "{port}"', "baudrate = 9600", "timeout = 0.3"]
    for device_id, unit in DEVICES.items():
        kind = "modbus-purifier" if unit == 4 else "modbus-sensor"
        lines += ["[[modbus.buses.devices]]", f'id = "{device_id}"', f"slave = {unit}", f'map = "{MAPS[unit]}"',
                  "scan_interval = 0.2", f'kind = "{kind}"', 'room = "101"']
    return "\n".join(lines)


async def test_modbus_readings_are_stored_and_a_rest_command_is_acked_by_read_back(
        gateway_factory: GatewayFactory, sim_line: SimLine) -> None:
    gw = await gateway_factory(devices=(), extra=modbus_config(str(sim_line.path)))

    def stored() -> set[str]:
        return {d for (d,) in gw.query("SELECT DISTINCT device_id FROM readings")}

    await wait_for(lambda: stored() == set(DEVICES), timeout=10)
    (metrics,) = gw.query("SELECT metrics FROM readings WHERE device_id = 'co2-1' LIMIT 1")[0]
    assert 400 <= json.loads(metrics)["co2"] <= 900
    assert gw.gateway.registry.kind("purifier-4") == "modbus-purifier"

    assert gw.gateway.api is not None
    base = f"http://127.0.0.1:{gw.gateway.api.port}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        async with session.post(f"{base}/api/device/purifier-4/command",
                                json={"action": "setFanSpeed", "value": 3}) as resp:
            record = await resp.json()
            assert resp.status == 200, record
        assert record["status"] == "acked" and record["attempts"] == 1
        assert record["state"]["fanSpeed"] == 3
        assert sim_line.slave(4).registers["holding"][0] == 3
        async with session.get(f"{base}/api/device/purifier-4/state") as resp:
            state = await resp.json()
        assert state["online"] is True and state["metrics"]["fanSpeed"] == 3
        async with session.post(f"{base}/api/device/co2-1/command", json={"action": "turnOn"}) as resp:
            assert resp.status == 400  # a sensor takes no commands
        async with session.get(f"{base}/health") as resp:
            health = await resp.json()
        assert health["links"][f"modbus:{sim_line.path}"]["state"] == "up"
        assert health["devices"] == 4 and health["devicesOnline"] == 4

    await wait_for(lambda: any(json.loads(m).get("fanSpeed") == 3 for (m,) in gw.query(
        "SELECT metrics FROM readings WHERE device_id = 'purifier-4' ORDER BY id DESC LIMIT 1")), timeout=5)
    await gw.flush()
    audit = gw.query("SELECT action, status FROM command_log WHERE device_id = 'purifier-4'")
    assert audit == [("setFanSpeed", "acked")]
