"""Pre-clean: a timed boost of one device (the ``preclean`` layer), stored so that it survives a restart.

Starting one first remembers what the device does now as its manual layer (when it has none), so the
end restores it; the restoring commands are the pre-clean's doing in the audit log. A new start replaces
a running one. It ends by expiry (the layer's ``expires_at``, on the control loop's timer), by a cancel,
or while the gateway was down (said so at start-up). The end restores whatever the lower layers say
*now* (a schedule that began meanwhile, else the manual setting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.control.command_model import CommandError
from gateway.control.desired import FanState, Layer
from gateway.control.layers import Layers
from gateway.control.loop import Enqueue
from gateway.core.errors import ConflictError
from gateway.core.models import DeviceEvent
from gateway.store import control_repo
from gateway.store.control_repo import StoredLayer

log = structlog.get_logger(__name__)

PRECLEAN_MINUTES_MAX = 24 * 60

# (device, now, the label of the layer that ended, if one did)
LayerChanged = Callable[[str, float, str | None], None]


@dataclass(frozen=True, slots=True)
class PrecleanStatus:
    """A device's pre-clean as the API and the cloud show it."""

    device: str
    active: bool
    fan_speed: int | None
    started_at: float | None
    ends_at: float | None
    remaining_seconds: float  # to the millisecond; a whole number (0 when inactive) is an int
    source: str | None


@dataclass(slots=True)
class _Run:
    fan_speed: int
    started_at: float
    ends_at: float
    source: str


class Precleans:
    """The running pre-clean of each device."""

    def __init__(self, *, layers: Layers, layer_changed: LayerChanged, queue: Enqueue) -> None:
        self._layers = layers
        self._layer_changed = layer_changed
        self._queue = queue
        self._runs: dict[str, _Run] = {}

    def restore(self, stored: StoredLayer, now: float) -> None:
        """A stored pre-clean at start-up: it goes on with the time left, or it ended while we were down."""
        expires_at = stored.expires_at
        if expires_at is not None and expires_at > now:
            value = FanState(stored.power, stored.fan_speed)
            self._layers.desired.set_layer(stored.device, Layer.PRECLEAN, value, expires_at)
            self._runs[stored.device] = _Run(stored.fan_speed, stored.started_at, expires_at, stored.source)
            log.info("preclean.resumed", device_id=stored.device, remaining_s=round(expires_at - now, 1))
        else:  # it ended while the gateway was down: say so, and the reconciler restores (its doing)
            self._ended(stored.device, stored.fan_speed, stored.started_at, expires_at, "expired", now)
            self._layer_changed(stored.device, now, Layer.PRECLEAN.label)

    def status(self, device: str, now: float) -> PrecleanStatus:
        run = self._runs.get(device)
        if run is None or run.ends_at <= now:
            return PrecleanStatus(device, False, None, None, None, 0, None)
        remaining = round(run.ends_at - now, 3)
        return PrecleanStatus(device, True, run.fan_speed, run.started_at, run.ends_at,
                              int(remaining) if remaining.is_integer() else remaining, run.source)

    def start(self, device: str, fan_speed: int, minutes: int, source: str, now: float) -> None:
        """Start (or replace) the device's pre-clean; raises CommandError naming a bad argument."""
        if isinstance(fan_speed, bool) or not isinstance(fan_speed, int) or not 1 <= fan_speed <= 5:
            raise CommandError("fanSpeed", f"expected a whole number 1..5, got {fan_speed!r}")
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= PRECLEAN_MINUTES_MAX:
            raise CommandError("minutes", f"expected a whole number 1..{PRECLEAN_MINUTES_MAX}, got {minutes!r}")
        self._layers.seed_manual(device, now, by="preclean")
        ends_at = now + minutes * 60.0
        replaced = device in self._runs
        self._runs[device] = _Run(fan_speed, now, ends_at, source)
        self._layers.set_stored(device, Layer.PRECLEAN, FanState(True, fan_speed), ends_at, now, source)
        self._queue(DeviceEvent(now, device, "preclean.started", {
            "fanSpeed": fan_speed, "minutes": minutes, "endsAt": ends_at, "source": source, "replaced": replaced,
        }))
        log.info("preclean.started", device_id=device, fan_speed=fan_speed, minutes=minutes, source=source)
        self._layer_changed(device, now, None)

    def cancel(self, device: str, source: str, now: float) -> None:
        """End the running pre-clean now; ConflictError when none runs."""
        run = self._runs.get(device)
        if run is None or run.ends_at <= now:
            raise ConflictError(f"no pre-clean is running on {device}")
        self._layers.desired.clear_layer(device, Layer.PRECLEAN)
        self._ended(device, run.fan_speed, run.started_at, run.ends_at, "cancelled", now, source=source)
        self._layer_changed(device, now, Layer.PRECLEAN.label)

    def expired(self, device: str, now: float) -> None:
        """The layer's time is up (the caller purged it and re-drives the device)."""
        run = self._runs.get(device)
        if run is not None:
            self._ended(device, run.fan_speed, run.started_at, run.ends_at, "expired", now)

    def _ended(self, device: str, fan_speed: int, started_at: float, ends_at: float | None, reason: str, now: float,
               *, source: str | None = None) -> None:
        self._runs.pop(device, None)
        data: dict[str, Any] = {"reason": reason, "fanSpeed": fan_speed, "startedAt": started_at, "endsAt": ends_at}
        if source is not None:
            data["cancelledBy"] = source
        self._queue(
            control_repo.layer_delete(device, Layer.PRECLEAN.label),
            DeviceEvent(now, device, "preclean.ended", data),
        )
        log.info("preclean.ended", device_id=device, reason=reason)
