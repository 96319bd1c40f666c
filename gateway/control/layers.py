"""The desired-state layers of every device, and the stored rows that let them survive a restart.

The table itself is the pure :class:`~gateway.control.desired.DesiredState`; this adds what control does
around it: a stored layer (manual, pre-clean) queues its ``desired_layers`` row when it is set, and the
manual layer remembers who set it, so the commands that later restore it carry that source. The
schedule layer is never stored: it is recomputed from the schedules at start-up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gateway.control.commands import CommandRequest, Source
from gateway.control.desired import DesiredState, FanState, Layer
from gateway.control.loop import Enqueue
from gateway.core.models import RowWrite
from gateway.store import control_repo
from gateway.store.control_repo import StoredLayer

Reported = Callable[[str], Mapping[str, Any] | None]


class Layers:
    def __init__(self, *, reported: Reported, queue: Enqueue) -> None:
        self.desired = DesiredState()
        self._reported = reported
        self._queue = queue
        self._manual_source: dict[str, str] = {}

    def manual_source(self, device: str) -> str | None:
        """Who set the device's manual layer (a stored value may name a source this version lacks)."""
        return self._manual_source.get(device)

    def has_manual(self, device: str) -> bool:
        return self.desired.get_layer(device, Layer.MANUAL) is not None

    def restore_manual(self, device: str, value: FanState, source: str) -> None:
        """The stored manual layer, at start-up (its row is already there)."""
        self.desired.set_layer(device, Layer.MANUAL, value)
        self._manual_source[device] = source

    def set_manual(self, device: str, value: FanState, source: str, now: float) -> None:
        self.restore_manual(device, value, source)
        self._queue(self._row(device, Layer.MANUAL, value, None, now, source))

    def set_stored(self, device: str, layer: Layer, value: FanState, expires_at: float | None, now: float,
                   source: str) -> None:
        """Set a layer that outlives a restart (a pre-clean) and queue its row."""
        self.desired.set_layer(device, layer, value, expires_at)
        self._queue(self._row(device, layer, value, expires_at, now, source))

    def manual_after(self, device: str, request: CommandRequest) -> FanState | None:
        """The manual layer once this command is done: a command changes power or speed, the other stays.

        The other half comes from the manual layer, else from what the device last reported. When the
        speed was never known there is no manual layer to keep (the device keeps its own).
        """
        entry = self.desired.get_layer(device, Layer.MANUAL)
        reported = self._reported(device) or {}
        power: object = entry.value.power if entry else reported.get("powerOn")
        speed: object = entry.value.fan_speed if entry else reported.get("fanSpeed")
        if request.action == "setFanSpeed":
            speed = request.value
        else:
            power = request.action == "turnOn"
        if not isinstance(power, bool):
            power = True  # a speed was set: a purifier told its speed is expected to run
        if isinstance(speed, bool) or not isinstance(speed, int) or not 0 <= speed <= 5:
            return None
        return FanState(power, speed)

    def seed_manual(self, device: str, now: float, *, by: Source) -> None:
        """Before an override, remember what the device does now, so its end can restore it.

        The restoring commands are then the override's doing, and the audit log says so (`by`).
        """
        if self.has_manual(device):
            return
        reported = self._reported(device) or {}
        power, speed = reported.get("powerOn"), reported.get("fanSpeed")
        if isinstance(power, bool) and isinstance(speed, int) and not isinstance(speed, bool) and 0 <= speed <= 5:
            self.set_manual(device, FanState(power, speed), by, now)

    @staticmethod
    def _row(device: str, layer: Layer, value: FanState, expires_at: float | None, now: float, source: str
             ) -> RowWrite:
        return control_repo.layer_row(
            StoredLayer(device, layer.label, value.power, value.fan_speed, expires_at, now, source))
