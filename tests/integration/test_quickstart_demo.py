"""The README's first Quick start block: `edge-gateway demo` with the example config, as a user runs it.

It binds the example config's ports (MQTT 1883, REST API 8080) on this machine, like the user's run.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import sys
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.panel import PanelClient

ROOT = Path(__file__).resolve().parents[2]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _panel_overview(base: str, password: str) -> str:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        client = PanelClient(base, http)
        status, _ = await client.login("demo", password)
        assert status == 200
        status, page = await client.call("GET", "/")
        assert status == 200
        return str(page)


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_demo_runs_purifiers_into_sqlite_and_serves_the_api(tmp_path: Path) -> None:
    if not (_port_free(1883) and _port_free(8080)):
        pytest.fail("ports 1883/8080 are taken on this machine: the Quick start demo could not run here either")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", "--interval", "1", "--duration", "8",
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    devices: object = None
    overview = ""
    async with asyncio.timeout(60):
        while line := (await proc.stdout.readline()).decode():
            lines.append(line)
            if devices is None and "readings committed" in line:
                # while it runs, the REST API answers with the three demo purifiers
                devices = await asyncio.to_thread(_get, "http://127.0.0.1:8080/api/device/list/all")
                password = re.search(r"panel on http://127.0.0.1:8080/ \(log in as demo / (\S+)\)", "".join(lines))
                assert password is not None, "".join(lines)
                overview = await _panel_overview("http://127.0.0.1:8080", password.group(1))
        await proc.wait()
    output = "".join(lines)
    assert proc.returncode == 0, output[-3000:]
    assert "REST API on http://127.0.0.1:8080" in output
    # the three demo purifiers, then the example config's BLE sensors on the demo's simulated radio
    assert isinstance(devices, list) and [d["id"] for d in devices] == [
        "AP-01", "AP-02", "AP-03", "BLE-TH-01", "BLE-TH-02", "BLE-RUUVI-01", "BLE-ATC-01", "BLE-GATT-01"]
    assert "simulated BLE sensors BLE-TH-01, BLE-TH-02, BLE-RUUVI-01, BLE-ATC-01, BLE-GATT-01" in output
    committed = [int(x.split("demo: ")[1].split()[0]) for x in lines if "readings committed" in x]
    assert committed and committed[-1] > 0, output[-3000:]
    assert (tmp_path / "var" / "gateway.db").is_file()
    with sqlite3.connect(tmp_path / "var" / "gateway.db") as conn:
        stored = {row[0] for row in conn.execute("SELECT DISTINCT device_id FROM readings")}
    assert {"BLE-TH-01", "BLE-TH-02", "BLE-RUUVI-01", "BLE-ATC-01", "BLE-GATT-01"} <= stored, stored
    # the panel's demo login works, and the overview lists the purifiers
    assert all(f'data-device="{d}"' in overview for d in ("AP-01", "AP-02", "AP-03"))
