"""The simulated purifier's state machine: sensor ranges, PM physics, commands and their acks."""

from __future__ import annotations

from typing import Any

import pytest
from firmware_sim.purifier_model import REMEMBERED_COMMANDS, PurifierModel

from drivers.purifier import PURIFIER_FIELDS

# The simulator must speak exactly what the gateway's purifier decoder validates.
CONTRACT_KEYS = set(PURIFIER_FIELDS) | {"timestamp"}


def cmd(command_id: str, action: str, value: Any = None) -> dict[str, Any]:
    return {"commandId": command_id, "action": action, "value": value, "ts": 1763800000.1}


def check_ranges(r: dict[str, Any]) -> None:
    assert set(r) == CONTRACT_KEYS
    assert 18.0 <= r["temperature"] <= 28.0
    assert 20.0 <= r["humidity"] <= 80.0
    assert 0.0 <= r["pm1"] <= r["pm25"] <= r["pm10"]
    assert r["pm25"] <= 500.0
    assert 25.0 <= r["sound"] <= 75.0
    assert 0 <= r["voc"] <= 500
    assert isinstance(r["networkStrength"], int) and 0 <= r["networkStrength"] <= 100
    assert isinstance(r["fanSpeed"], int) and 0 <= r["fanSpeed"] <= 5
    assert isinstance(r["powerOn"], bool)
    assert isinstance(r["timestamp"], int)


@pytest.mark.parametrize("dt", [1.0, 120.0, 3600.0])
def test_ranges_hold_over_10000_steps(dt: float) -> None:
    model = PurifierModel(seed=7)
    for i in range(10_000):
        if i % 500 == 0:  # move the fan and power about too
            model.apply_command(cmd(f"f{i}", "setFanSpeed", (i // 500) % 6))
            model.apply_command(cmd(f"p{i}", "turnOff" if (i // 500) % 4 == 3 else "turnOn"))
        model.step(dt)
        check_ranges(model.reading(1763800000.0 + i * dt))


def test_reading_is_the_contract_flat_form_with_ms_timestamp() -> None:
    r = PurifierModel(seed=1).reading(1763800000.1234)
    check_ranges(r)
    assert r["timestamp"] == 1763800000123
    assert r["fanSpeed"] == 2 and r["powerOn"] is True


def test_same_seed_same_readings() -> None:
    a, b = PurifierModel(seed=42), PurifierModel(seed=42)
    for _ in range(100):
        a.step(60.0)
        b.step(60.0)
    assert a.reading(0.0) == b.reading(0.0)
    assert a.reading(0.0) != PurifierModel(seed=43).reading(0.0)


def test_sensors_drift_gradually() -> None:
    model = PurifierModel(seed=3)
    before = model.reading(0.0)
    model.step(120.0)
    after = model.reading(120.0)
    assert abs(after["temperature"] - before["temperature"]) < 1.0
    assert abs(after["humidity"] - before["humidity"]) < 5.0
    assert after != before


def _mean_pm25(fan_speed: int, *, power_on: bool = True, hours: int = 8) -> float:
    model = PurifierModel(seed=11, fan_speed=fan_speed, power_on=power_on)
    total = 0.0
    steps = hours * 60
    for _ in range(steps):
        model.step(60.0)
        total += model.pm25
    return total / steps


def test_higher_fan_speed_lowers_pm_over_time() -> None:
    means = [_mean_pm25(fan) for fan in range(6)]
    assert means == sorted(means, reverse=True)
    assert means[5] < means[0] / 4


def test_purifier_off_does_not_clean() -> None:
    assert _mean_pm25(5, power_on=False) == pytest.approx(_mean_pm25(0))


def test_sound_rises_with_fan_speed() -> None:
    levels = []
    for fan in range(6):
        model = PurifierModel(seed=5, fan_speed=fan)
        levels.append(model.sound)
    assert levels == sorted(levels) and levels[5] - levels[0] > 20


def test_commands_change_state() -> None:
    model = PurifierModel(seed=1)
    ack = model.apply_command(cmd("a", "setFanSpeed", 4))
    assert ack == {"commandId": "a", "status": "ok", "state": {"fanSpeed": 4, "powerOn": True}}
    ack = model.apply_command(cmd("b", "turnOff"))
    assert ack == {"commandId": "b", "status": "ok", "state": {"fanSpeed": 4, "powerOn": False}}
    assert model.reading(0.0)["powerOn"] is False
    ack = model.apply_command(cmd("c", "turnOn"))
    assert ack["state"] == {"fanSpeed": 4, "powerOn": True}
    ack = model.apply_command(cmd("d", "setFanSpeed", 0))
    assert ack["status"] == "ok" and model.reading(0.0)["fanSpeed"] == 0
    ack = model.apply_command(cmd("e", "setFanSpeed", 3.0))  # a whole float is a whole number
    assert ack["status"] == "ok" and ack["state"]["fanSpeed"] == 3
    assert isinstance(ack["state"]["fanSpeed"], int)


@pytest.mark.parametrize(
    ("action", "value", "reason"),
    [
        ("setFanSpeed", 6, "out of range"),
        ("setFanSpeed", -1, "out of range"),
        ("setFanSpeed", 2.5, "integer"),
        ("setFanSpeed", "3", "integer"),
        ("setFanSpeed", None, "integer"),
        ("setFanSpeed", True, "integer"),
        ("explode", None, "unknown action"),
        (None, None, "unknown action"),
    ],
)
def test_bad_commands_give_status_error_with_a_reason(action: Any, value: Any, reason: str) -> None:
    model = PurifierModel(seed=1, fan_speed=2)
    ack = model.apply_command(cmd("x", action, value))
    assert ack["commandId"] == "x"
    assert ack["status"] == "error"
    assert reason in ack["error"]
    assert ack["state"] == {"fanSpeed": 2, "powerOn": True}
    assert model.executed_commands == 0


def test_missing_command_id_is_an_error() -> None:
    model = PurifierModel(seed=1)
    ack = model.apply_command({"action": "turnOff"})
    assert ack["status"] == "error" and "commandId" in ack["error"]
    assert model.power_on is True


def test_ok_ack_has_no_error_key() -> None:
    assert "error" not in PurifierModel(seed=1).apply_command(cmd("a", "turnOn"))


def test_repeated_command_id_is_acked_with_the_original_result_and_not_rerun() -> None:
    model = PurifierModel(seed=1)
    first = model.apply_command(cmd("X", "setFanSpeed", 4))
    model.apply_command(cmd("Y", "setFanSpeed", 1))
    again = model.apply_command(cmd("X", "setFanSpeed", 4))
    assert again == first == {"commandId": "X", "status": "ok", "state": {"fanSpeed": 4, "powerOn": True}}
    assert model.fan_speed == 1
    assert model.executed_commands == 2


def test_repeated_failed_command_is_acked_with_the_original_error() -> None:
    model = PurifierModel(seed=1)
    first = model.apply_command(cmd("X", "setFanSpeed", 9))
    again = model.apply_command(cmd("X", "setFanSpeed", 3))  # same id, even if the body differs
    assert again == first and again["status"] == "error"
    assert model.fan_speed == 2


def test_returned_acks_are_copies() -> None:
    model = PurifierModel(seed=1)
    first = model.apply_command(cmd("X", "setFanSpeed", 4))
    first["state"]["fanSpeed"] = 99
    assert model.apply_command(cmd("X", "setFanSpeed", 4))["state"]["fanSpeed"] == 4


def test_only_the_last_256_command_ids_are_remembered() -> None:
    model = PurifierModel(seed=1)
    model.apply_command(cmd("old", "setFanSpeed", 5))
    for i in range(REMEMBERED_COMMANDS):
        model.apply_command(cmd(f"n{i}", "setFanSpeed", i % 5))
    executed = model.executed_commands
    # "n0" is still among the last 256; "old" was pushed out and runs again
    model.apply_command(cmd("n0", "setFanSpeed", 0))
    assert model.executed_commands == executed
    model.apply_command(cmd("old", "setFanSpeed", 5))
    assert model.executed_commands == executed + 1 and model.fan_speed == 5


def test_remembering_is_lru_a_repeat_refreshes_the_id() -> None:
    model = PurifierModel(seed=1)
    model.apply_command(cmd("keep", "turnOn"))
    for i in range(REMEMBERED_COMMANDS - 1):
        model.apply_command(cmd(f"n{i}", "turnOn"))
    model.apply_command(cmd("keep", "turnOn"))  # repeat: moves to the newest end
    model.apply_command(cmd("push", "turnOn"))  # evicts n0, not keep
    executed = model.executed_commands
    model.apply_command(cmd("keep", "turnOn"))
    assert model.executed_commands == executed
