"""Device drivers own their protocol; the registry maps kinds to them and config validation asks it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drivers import registry
from drivers.purifier import PurifierDriver
from drivers.sensor import SensorDriver
from gateway.core.device_commands import OutgoingCommand, SetFanSpeed, TurnOff, TurnOn
from gateway.core.errors import ConfigError, PayloadError
from gateway.settings import load_settings


def test_builtin_kinds_load_lazily() -> None:
    probe = ("import sys, drivers.registry as r; kinds = r.known_kinds(); "
             "print('drivers.sensor' in sys.modules, type(r.load('sensor')).__module__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "drivers.sensor"]  # listing kinds imports no driver; loading one does
    assert {"purifier", "sensor"} <= set(registry.known_kinds())
    with pytest.raises(KeyError, match="unknown device kind 'fridge'"):
        registry.load("fridge")


def test_purifier_commands_are_the_contract_json_and_identical_on_every_attempt() -> None:
    driver = PurifierDriver()
    cmd = OutgoingCommand("c-1", "AP-01", SetFanSpeed(4), 1763800000.5)
    assert json.loads(driver.encode_command(cmd)) == {
        "commandId": "c-1", "action": "setFanSpeed", "value": 4, "ts": 1763800000.5,
    }
    assert json.loads(driver.encode_command(OutgoingCommand("c-2", "AP-01", TurnOff(), 1.0)))["value"] is None
    assert driver.encode_command(cmd) == driver.encode_command(cmd)


def test_purifier_ranges_live_in_its_driver() -> None:
    driver = PurifierDriver()
    driver.check_command(SetFanSpeed(5))
    driver.check_command(TurnOn())
    with pytest.raises(ValueError, match=r"0\.\.5"):
        driver.check_command(SetFanSpeed(6))


def test_purifier_reads_both_contract_forms_and_its_acks() -> None:
    driver = PurifierDriver()
    flat = driver.decode_reading("AP-01", b'{"timestamp": 1763800000000, "fanSpeed": 2, "pm25": 3.5}', 5.0)
    assert flat.ts == 1763800000.0 and flat.metrics == {"fanSpeed": 2, "pm25": 3.5}
    generic = driver.decode_reading("AP-01", b'{"ts": 10, "metrics": {"co2": 600}}', 5.0)
    assert generic.metrics == {"co2": 600}
    ack = driver.decode_ack(b'{"commandId": "c-1", "status": "ok", "state": {"fanSpeed": 4}}')
    assert ack.ok and ack.state == {"fanSpeed": 4}
    with pytest.raises(PayloadError, match="fanSpeed"):
        driver.decode_reading("AP-01", b'{"fanSpeed": 9}', 5.0)


def test_a_sensor_has_only_the_generic_form_and_takes_no_commands() -> None:
    driver = SensorDriver()
    with pytest.raises(PayloadError, match="metrics"):
        driver.decode_reading("S-1", b'{"temperature": 20}', 1.0)
    with pytest.raises(ValueError, match="no commands"):
        driver.check_command(TurnOn())


def test_config_names_an_unknown_kind_with_its_field_path(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "gw"\norg = "o"\n[[devices]]\nid = "X-1"\nkind = "fridge"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert any("devices.0[id=X-1].kind" in line and "unknown device kind 'fridge'" in line for line in err.value.errors)


def test_a_registered_kind_passes_config_validation(tmp_path: Path) -> None:
    registry.register("fridge", SensorDriver)
    try:
        path = tmp_path / "gateway.toml"
        path.write_text('[gateway]\nid = "gw"\norg = "o"\n[broker]\nallow_anonymous = true\n'
                        '[[devices]]\nid = "X-1"\nkind = "fridge"\n', encoding="utf-8")
        assert load_settings(path).settings.devices[0].kind == "fridge"
    finally:
        registry.unregister("fridge")
