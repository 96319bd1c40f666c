"""The desired-state layers of every device, and the stored rows that let them survive a restart.

The table itself is the pure :class:`~gateway.control.desired.DesiredState`; this adds what control does
around it: a stored layer (manual, pre-clean) queues its ``desired_layers`` row when it is set, and the
manual layer remembers who set it, so the commands that later restore it carry that source. The
schedule layer is never stored: it is recomputed from the schedules at start-up.

A person's command sets the manual layer when it is submitted; if it is cancelled before it is done, the
manual layer becomes what it would be without it: the setting before the first command still under way,
with the others still under way applied in order (:meth:`Layers.command_cancelled`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.control.command_model import CommandRequest, Source
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
        # device -> [(command id, the manual layer before that command)] of commands that set it
        self._trail: dict[str, list[tuple[str, FanState | None]]] = {}

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

    def command_set_manual(self, device: str, request: CommandRequest, now: float, *,
                           live: Callable[[str], bool]) -> None:
        """A person's command: it becomes the manual layer (when the device's speed is known).

        `live(command_id)`: is that command still under way (for forgetting the trail of finished ones).
        """
        trail = [item for item in self._trail.get(device, []) if live(item[0])]
        entry = self.desired.get_layer(device, Layer.MANUAL)
        manual = self.manual_after(device, request)
        if manual is None:
            return
        trail.append((request.command_id, entry.value if entry else None))
        self._trail[device] = trail
        self.set_manual(device, manual, request.source, now)

    def command_cancelled(self, device: str, command_id: str, still_live: Iterable[CommandRequest],
                          now: float) -> None:
        """Undo what a cancelled command did to the manual layer; `still_live`: the device's other commands
        of people, in order, still under way."""
        trail = self._trail.get(device, [])
        if not any(cid == command_id for cid, _ in trail):
            return  # it did not set the manual layer
        remaining = list(still_live)
        live_ids = {r.command_id for r in remaining} | {command_id}
        trail = [item for item in trail if item[0] in live_ids]
        value = trail[0][1]  # the setting before the earliest command still under way
        in_trail = {cid for cid, _ in trail}
        replayed: list[tuple[str, FanState | None]] = []
        for request in remaining:  # each one's "before" is now without the cancelled command
            if request.command_id in in_trail:
                replayed.append((request.command_id, value))
            value = self._applied(device, value, request)
        self._trail[device] = replayed
        if value is not None:
            self.set_manual(device, value, self._manual_source.get(device, "api"), now)
        elif self.desired.clear_layer(device, Layer.MANUAL):
            self._manual_source.pop(device, None)
            self._queue(control_repo.layer_delete(device, Layer.MANUAL.label))

    def manual_after(self, device: str, request: CommandRequest) -> FanState | None:
        """The manual layer once this command is done: a command changes power or speed, the other stays.

        The other half comes from the manual layer, else from what the device last reported. When the
        speed was never known there is no manual layer to keep (the device keeps its own).
        """
        entry = self.desired.get_layer(device, Layer.MANUAL)
        return self._applied(device, entry.value if entry else None, request)

    def _applied(self, device: str, base: FanState | None, request: CommandRequest) -> FanState | None:
        reported = self._reported(device) or {}
        power: object = base.power if base else reported.get("powerOn")
        speed: object = base.fan_speed if base else reported.get("fanSpeed")
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

        The stored row names the override as who set the manual layer (`by`); the restoring commands name
        the override as their cause (the reconciler's audit).
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
