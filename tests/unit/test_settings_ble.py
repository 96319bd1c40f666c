"""The [ble] section: devices by MAC, formats, bindkeys and GATT characteristics checked at load, errors named by
field path; bleak imported only when the gateway's own radio is used."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.core.errors import ConfigError
from gateway.settings import load_settings

HEAD = """
[gateway]
id = "gw"
org = "org"
[broker]
allow_anonymous = true
"""


def _load(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "gw.toml"
    path.write_text(HEAD + textwrap.dedent(text), encoding="utf-8")
    try:
        load_settings(path)
    except ConfigError as exc:
        return [line.split(": ", 1)[1] for line in exc.errors]
    return []


def test_ble_devices_are_normalised_and_get_their_kinds(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(HEAD + textwrap.dedent("""
        [[devices]]
        id = "AP-01"
        [[ble.devices]]
        id = "BT-1"
        mac = "a4-c1-38-8d-18-b2"
        format = "bthome"
        bindkey = "231D39C1D7CC1AB1AEE224CD096DB932"
        [[ble.devices]]
        id = "G-1"
        mac = "d00000000005"
        [[ble.devices.gatt]]
        uuid = "2A6E"
        metric = "temperature"
        scale = 0.01
        mode = "notify"
    """), encoding="utf-8")
    s = load_settings(path).settings
    bt, gatt = s.ble.devices
    assert (bt.mac, bt.bindkey) == ("A4:C1:38:8D:18:B2", "231d39c1d7cc1ab1aee224cd096db932")
    assert gatt.mac == "D0:00:00:00:00:05" and gatt.gatt[0].uuid == "00002a6e-0000-1000-8000-00805f9b34fb"
    assert s.device_kinds() == {"AP-01": "purifier", "BT-1": "ble-bthome", "G-1": "ble-gatt"}


@pytest.mark.parametrize(("text", "problem"), [
    ('[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18"\nformat = "bthome"',
     "ble.devices.0[id=X].mac: a MAC address is six hex pairs"),
    ('[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"\nformat = "eddystone"', "ble.devices.0[id=X].format"),
    ('[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"\nformat = "ruuvi"\nbindkey = "' + "0" * 32 + '"',
     "a bindkey is for an encrypted BTHome or pvvx sensor"),
    ('[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"\nformat = "bthome"\nbindkey = "abc"',
     "ble.devices.0[id=X].bindkey: a bindkey is 32 hex digits"),
    ('[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"', "give the advertisement format, GATT characteristics"),
    ('[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"\n[[ble.devices.gatt]]\nuuid = "xyz"\nmetric = "t"',
     "ble.devices.0[id=X].gatt.0.uuid: a characteristic UUID is 4 hex digits"),
    ('[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"\nformat = "atc"\n'
     '[[ble.devices]]\nid = "Y"\nmac = "a4:c1:38:8d:18:b2"\nformat = "atc"',
     "ble.devices: a MAC belongs to one BLE device, repeated: A4:C1:38:8D:18:B2"),
    ('[[devices]]\nid = "X"\n[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"\nformat = "atc"',
     "ble.devices.0[id=X].id: device id 'X' appears more than once"),
    ('[ble]\nradio = false\n[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"\n[[ble.devices.gatt]]\n'
     'uuid = "2a19"\nmetric = "battery"', "GATT devices need the gateway's own radio"),
])
def test_ble_config_errors_name_the_field(tmp_path: Path, text: str, problem: str) -> None:
    errors = _load(tmp_path, text)
    assert any(problem in e for e in errors), errors


_PROBE = """
import asyncio, sys
from gateway.app import Gateway
from gateway.settings import load_settings

async def build():
    gateway = Gateway(load_settings(sys.argv[1]))
    print("bleak" in sys.modules, gateway.ble is not None, gateway.ble_adverts is not None)

asyncio.run(build())
"""


@pytest.mark.parametrize(("ble", "expected"), [
    ("", "False False False"),
    ('[ble]\nradio = false\n[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"\nformat = "bthome"',
     "False False True"),
    ('[[ble.devices]]\nid = "X"\nmac = "A4:C1:38:8D:18:B2"\nformat = "bthome"', "True True True"),
])
def test_bleak_is_imported_only_for_the_gateways_own_radio(tmp_path: Path, ble: str, expected: str) -> None:
    """No controller on this machine: building the link (BlueZ backend, the default) must not fail either."""
    path = tmp_path / "gw.toml"
    path.write_text(HEAD.replace('org = "org"', f'org = "org"\ndata_dir = "{tmp_path}"') + ble + "\n",
                    encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True)
    assert out.stdout.strip() == expected, out.stderr[-2000:]
