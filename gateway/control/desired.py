"""Desired fan state per device, computed from layers (DESIGN principle 3).

Layers, lowest to highest: ``manual``, ``schedule``, ``preclean``, ``rule``. The effective desired state
is the value of the highest layer that is set and not expired. Nothing is copied between layers: when a
higher layer ends (cleared or expired) the answer is whatever the lower layers hold *at that moment*, so
a pre-clean that ends yields a schedule that began meanwhile, or the latest manual setting.

A layer with ``expires_at`` is active while ``now < expires_at`` (epoch seconds, from the injected clock).
Expired entries are ignored by :meth:`DesiredState.effective`; :meth:`DesiredState.purge_expired` drops
them and reports which ones ended, so the reconciler can log/emit events. No I/O, no clock reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

FAN_SPEED_MIN = 0
FAN_SPEED_MAX = 5


class Layer(IntEnum):
    """Higher value wins."""

    MANUAL = 0
    SCHEDULE = 1
    PRECLEAN = 2
    RULE = 3

    @property
    def label(self) -> str:
        """The name stored, logged and shown: ``manual``, ``schedule``, ``preclean``, ``rule``."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class FanState:
    """What a purifier should do: power on/off and a fan speed 0-5."""

    power: bool
    fan_speed: int

    def __post_init__(self) -> None:
        if not isinstance(self.power, bool):
            raise ValueError(f"power: expected true/false, got {self.power!r}")
        if isinstance(self.fan_speed, bool) or not isinstance(self.fan_speed, int):
            raise ValueError(f"fan_speed: expected a whole number, got {self.fan_speed!r}")
        if not FAN_SPEED_MIN <= self.fan_speed <= FAN_SPEED_MAX:
            raise ValueError(f"fan_speed: {self.fan_speed} out of range {FAN_SPEED_MIN}..{FAN_SPEED_MAX}")


@dataclass(frozen=True, slots=True)
class LayerEntry:
    value: FanState
    expires_at: float | None = None

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class Effective:
    """The winning layer's value, which layer it came from and when that layer expires (if it does)."""

    value: FanState
    layer: Layer
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Expired:
    device: str
    layer: Layer
    entry: LayerEntry


class DesiredState:
    """Per-device layer table. Not thread-safe; owned by the reconciler's task."""

    def __init__(self) -> None:
        self._layers: dict[str, dict[Layer, LayerEntry]] = {}

    def set_layer(self, device: str, layer: Layer, value: FanState, expires_at: float | None = None) -> None:
        """Set (or replace) one layer of one device."""
        if not isinstance(layer, Layer):
            raise TypeError(f"layer: expected a Layer, got {layer!r}")
        if expires_at is not None and not math.isfinite(expires_at):
            raise ValueError(f"expires_at: {expires_at!r} is not a finite time")
        self._layers.setdefault(device, {})[layer] = LayerEntry(value, expires_at)

    def clear_layer(self, device: str, layer: Layer) -> bool:
        """Remove one layer; True if it was set."""
        table = self._layers.get(device)
        if table is None or layer not in table:
            return False
        del table[layer]
        if not table:
            del self._layers[device]
        return True

    def get_layer(self, device: str, layer: Layer) -> LayerEntry | None:
        """The stored entry, expired or not."""
        return self._layers.get(device, {}).get(layer)

    def layers(self, device: str, now: float) -> dict[Layer, LayerEntry]:
        """The active layers of a device (a copy), for status pages."""
        return {layer: e for layer, e in self._layers.get(device, {}).items() if e.active(now)}

    def effective(self, device: str, now: float) -> Effective | None:
        """The highest active layer's value, or None when no layer is active."""
        table = self._layers.get(device)
        if not table:
            return None
        for layer in sorted(table, reverse=True):
            entry = table[layer]
            if entry.active(now):
                return Effective(entry.value, layer, entry.expires_at)
        return None

    def next_expiry(self, device: str, now: float | None = None) -> float | None:
        """Earliest expiry of the device's layers (only those still in the future if ``now`` is given).

        The reconciler sleeps until then and re-evaluates: the effective state may change at that instant.
        """
        times = [
            e.expires_at
            for e in self._layers.get(device, {}).values()
            if e.expires_at is not None and (now is None or e.expires_at > now)
        ]
        return min(times, default=None)

    def next_wakeup(self, now: float) -> float | None:
        """Earliest future expiry over all devices."""
        times = [t for d in self._layers if (t := self.next_expiry(d, now)) is not None]
        return min(times, default=None)

    def purge_expired(self, now: float) -> list[Expired]:
        """Drop expired entries and say which ended (device order, then layer order)."""
        ended: list[Expired] = []
        for device in sorted(self._layers):
            table = self._layers[device]
            for layer in sorted(table):
                if not table[layer].active(now):
                    ended.append(Expired(device, layer, table.pop(layer)))
            if not table:
                del self._layers[device]
        return ended

    def devices(self) -> list[str]:
        """Devices with at least one stored layer (expired ones included until purged)."""
        return sorted(self._layers)
