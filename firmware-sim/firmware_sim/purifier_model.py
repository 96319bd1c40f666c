"""A simulated air purifier's sensors and state: a pure state machine, no I/O, no clock.

`step(dt)` moves the sensors on by `dt` seconds; `reading(now)` is the flat air-purifier form of
CONTRACT section 1; `apply_command(cmd)` runs a command and returns its acknowledgement payload.

Sensors drift as bounded, mean-reverting random walks drawn from one seeded `random.Random`, so a
given seed and sequence of calls always yields the same readings. Every `step` draws the same number
of random numbers whatever the state, so two models with one seed differ only by their commands.

Particulate matter follows a one-box room model: a source that drifts (outdoor air, cooking) adds
particles, the filter removes them at a rate that grows with fan speed, so PM settles at
source / removal rate. pm1 and pm10 are derived from pm25 with bounded ratios, which keeps
pm1 <= pm25 <= pm10 at all times.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from typing import Any, Final

FAN_MIN: Final = 0
FAN_MAX: Final = 5
REMEMBERED_COMMANDS: Final = 256

TEMPERATURE_RANGE: Final = (18.0, 28.0)
HUMIDITY_RANGE: Final = (20.0, 80.0)
PM25_MAX: Final = 500.0
SOUND_RANGE: Final = (25.0, 75.0)
VOC_RANGE: Final = (0.0, 500.0)
NETWORK_RANGE: Final = (0.0, 100.0)
PM1_RATIO_RANGE: Final = (0.55, 0.85)
PM10_RATIO_RANGE: Final = (1.15, 1.9)

# PM removal rate (per minute) by effective fan speed: natural settling at 0, then the filter.
_PM_REMOVAL_PER_MIN: Final = (0.01, 0.06, 0.11, 0.17, 0.24, 0.32)
# The particle source (ug/m3 per minute) wanders in this band.
_PM_SOURCE_RANGE: Final = (0.05, 1.2)

ACTIONS: Final = ("setFanSpeed", "turnOn", "turnOff")


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return min(high, max(low, value))


class PurifierModel:
    """One purifier: sensor state plus `powerOn` and `fanSpeed` (0-5)."""

    def __init__(self, *, seed: int | None = None, fan_speed: int = 2, power_on: bool = True) -> None:
        if not FAN_MIN <= fan_speed <= FAN_MAX:
            raise ValueError(f"fan_speed must be {FAN_MIN}..{FAN_MAX}, got {fan_speed}")
        self._rng = random.Random(seed)
        rng = self._rng
        self.fan_speed: int = fan_speed
        self.power_on: bool = power_on
        self.temperature: float = rng.uniform(20.5, 24.0)
        self.humidity: float = rng.uniform(35.0, 55.0)
        self.pm_source: float = rng.uniform(0.2, 0.6)
        self.pm25: float = rng.uniform(5.0, 25.0)
        self.pm1_ratio: float = rng.uniform(0.62, 0.75)
        self.pm10_ratio: float = rng.uniform(1.3, 1.6)
        self.voc: float = rng.uniform(80.0, 130.0)
        self.network_strength: float = rng.uniform(55.0, 85.0)
        self._sound_noise: float = 0.0
        self._acks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.executed_commands: int = 0

    # ------------------------------------------------------------------ sensors

    @property
    def effective_fan(self) -> int:
        """The speed the fan really turns at: 0 while the purifier is off."""
        return self.fan_speed if self.power_on else 0

    @property
    def pm1(self) -> float:
        return self.pm25 * self.pm1_ratio

    @property
    def pm10(self) -> float:
        return self.pm25 * self.pm10_ratio

    @property
    def sound(self) -> float:
        """Sound level in dB(A): room ambience plus the fan, rising with its speed."""
        fan = self.effective_fan
        base = 30.0 + (6.5 * fan + 0.6 * fan * fan if fan else 0.0)
        return _clamp(base + self._sound_noise, SOUND_RANGE)

    def _walk(self, value: float, mean: float, tau_s: float, sigma_per_min: float, dt: float) -> float:
        """Mean-reverting random walk (Ornstein-Uhlenbeck, exact in dt); one gauss draw."""
        pull = 1.0 - math.exp(-dt / tau_s)
        noise = self._rng.gauss(0.0, 1.0) * sigma_per_min * math.sqrt(dt / 60.0)
        return value + (mean - value) * pull + noise

    def step(self, dt: float) -> None:
        """Advance the sensors by `dt` seconds (no-op for dt <= 0)."""
        if dt <= 0 or not math.isfinite(dt):
            return
        fan = self.effective_fan
        self.temperature = _clamp(self._walk(self.temperature, 22.5, 3 * 3600.0, 0.08, dt), TEMPERATURE_RANGE)
        self.humidity = _clamp(self._walk(self.humidity, 45.0, 4 * 3600.0, 0.35, dt), HUMIDITY_RANGE)
        self.pm_source = _clamp(self._walk(self.pm_source, 0.4, 2 * 3600.0, 0.04, dt), _PM_SOURCE_RANGE)
        self.pm1_ratio = _clamp(self._walk(self.pm1_ratio, 0.68, 3600.0, 0.01, dt), PM1_RATIO_RANGE)
        self.pm10_ratio = _clamp(self._walk(self.pm10_ratio, 1.45, 3600.0, 0.02, dt), PM10_RATIO_RANGE)
        # One-box room: d(pm)/dt = source - k * pm, integrated exactly, plus multiplicative noise.
        k = _PM_REMOVAL_PER_MIN[fan] / 60.0
        equilibrium = (self.pm_source / 60.0) / k
        pm = equilibrium + (self.pm25 - equilibrium) * math.exp(-k * dt)
        pm *= math.exp(self._rng.gauss(0.0, 1.0) * 0.03 * math.sqrt(min(dt, 600.0) / 60.0))
        self.pm25 = _clamp(pm, (0.0, PM25_MAX))
        # VOC index: a fan running fast scrubs a little through the carbon layer.
        voc_mean = 110.0 - 6.0 * fan
        self.voc = _clamp(self._walk(self.voc, voc_mean, 1800.0, 4.0, dt), VOC_RANGE)
        self.network_strength = _clamp(self._walk(self.network_strength, 70.0, 1800.0, 3.0, dt), NETWORK_RANGE)
        self._sound_noise = _clamp(self._walk(self._sound_noise, 0.0, 120.0, 0.8, dt), (-3.0, 3.0))

    def reading(self, now: float) -> dict[str, Any]:
        """The CONTRACT flat form at Unix time `now` (seconds); `timestamp` is in milliseconds."""
        return {
            "timestamp": round(now * 1000),
            "temperature": round(self.temperature, 2),
            "humidity": round(self.humidity, 1),
            "pm1": round(self.pm1, 2),
            "pm25": round(self.pm25, 2),
            "pm10": round(self.pm10, 2),
            "sound": round(self.sound, 1),
            "voc": round(self.voc),
            "fanSpeed": self.fan_speed,
            "powerOn": self.power_on,
            "networkStrength": round(self.network_strength),
        }

    # ----------------------------------------------------------------- commands

    def state(self) -> dict[str, Any]:
        return {"fanSpeed": self.fan_speed, "powerOn": self.power_on}

    def apply_command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Run one command and return its ack payload (CONTRACT section 1).

        A commandId seen among the last 256 is not run again: its first ack is returned (a copy).
        Commands without a usable commandId are still answered, with status "error".
        """
        command_id = cmd.get("commandId")
        if not isinstance(command_id, str) or not command_id:
            return self._ack(command_id, "missing or invalid commandId")
        previous = self._acks.get(command_id)
        if previous is not None:
            self._acks.move_to_end(command_id)
            return _copy_ack(previous)
        error = self._execute(cmd.get("action"), cmd.get("value"))
        ack = self._ack(command_id, error)
        self._acks[command_id] = ack
        while len(self._acks) > REMEMBERED_COMMANDS:
            self._acks.popitem(last=False)
        return _copy_ack(ack)

    def _execute(self, action: object, value: object) -> str | None:
        """Apply an action; return None on success or the reason it was refused."""
        if action == "setFanSpeed":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"setFanSpeed: value must be an integer {FAN_MIN}-{FAN_MAX}, got {value!r}"
            if isinstance(value, float) and not value.is_integer():
                return f"setFanSpeed: value must be an integer {FAN_MIN}-{FAN_MAX}, got {value!r}"
            if not FAN_MIN <= value <= FAN_MAX:
                return f"setFanSpeed: value {value!r} out of range {FAN_MIN}-{FAN_MAX}"
            self.fan_speed = int(value)
        elif action == "turnOn":
            self.power_on = True
        elif action == "turnOff":
            self.power_on = False
        else:
            return f"unknown action {action!r}"
        self.executed_commands += 1
        return None

    def _ack(self, command_id: object, error: str | None) -> dict[str, Any]:
        ack: dict[str, Any] = {
            "commandId": command_id,
            "status": "ok" if error is None else "error",
            "state": self.state(),
        }
        if error is not None:
            ack["error"] = error
        return ack


def _copy_ack(ack: dict[str, Any]) -> dict[str, Any]:
    copied = dict(ack)
    copied["state"] = dict(ack["state"])
    return copied
