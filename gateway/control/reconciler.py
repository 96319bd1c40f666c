"""The reconciler: drives each device towards its effective desired state, one command at a time.

It compares the winning layer's value with what the device last reported (readings and acks) and
submits the next command needed to get there. It runs when a layer changes or expires, when the device
comes online, and at start-up; never while the device still has commands queued or in flight (it runs
again when they finish). After a failure of its own commands (refused, timed out, or acked without the
device getting there) it backs off, doubling up to a maximum, unless a layer changes or the device
reconnects. A manual command while a higher layer is in effect is carried out; the higher layer takes
the device back at its next change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from gateway.control.command_service import CommandService
from gateway.control.commands import SOURCES, CommandRecord, CommandRequest, Source
from gateway.control.desired import Effective, Layer
from gateway.control.layers import Layers
from gateway.core.device_commands import device_command, reached
from gateway.core.metrics import Metrics

if TYPE_CHECKING:
    from gateway.settings import ControlSection

log = structlog.get_logger(__name__)

Reported = Callable[[str], Mapping[str, Any] | None]

# The source of a command the reconciler sends for a layer; the manual layer's own source is stored.
LAYER_SOURCE: dict[Layer, Source] = {Layer.SCHEDULE: "schedule", Layer.PRECLEAN: "preclean", Layer.RULE: "rule"}


@dataclass(slots=True)
class _Backoff:
    until: float
    delay: float


class Reconciler:
    def __init__(
        self,
        settings: ControlSection,
        *,
        layers: Layers,
        commands: CommandService,
        reported: Reported,
        known: Callable[[str], bool],
        metrics: Metrics,
        desired: Callable[[str, Effective | None], None] = lambda device, effective: None,
    ) -> None:
        self._desired = desired  # told the effective desired state each time a device is reconciled
        self._settings = settings
        self._layers = layers
        self._commands = commands
        self._reported = reported
        self._known = known
        self._metrics = metrics
        self._backoff: dict[str, _Backoff] = {}
        self._restored_by: dict[str, Source] = {}  # device -> the override whose end returns it to manual
        self._dirty: set[str] = set()  # a layer changed while the device was busy: reconcile when it is free
        self._reconciling: dict[str, set[str]] = {}  # device -> ids of commands the reconciler submitted

    def layer_changed(self, device: str, now: float, cause: Source | None = None) -> None:
        """A layer was set, changed or ended (`cause`: the layer that ended, when the device returns to manual)."""
        self._backoff.pop(device, None)  # new intent: try at once
        if cause is not None:
            self._restored_by[device] = cause
        self.reconcile(device, now)

    def device_ready(self, device: str, now: float) -> None:
        """The device came (back) online: a reconnect is a fresh chance."""
        self._backoff.pop(device, None)
        self.reconcile(device, now)

    def reconcile(self, device: str, now: float) -> None:
        if not self._known(device):
            return
        eff = self._layers.desired.effective(device, now)
        self._desired(device, eff)
        if eff is None or not self._commands.executor.is_online(device):
            return  # nothing wanted, or applied when the device comes online
        if self._commands.busy(device):
            self._dirty.add(device)
            return
        backoff = self._backoff.get(device)
        if backoff is not None and now < backoff.until:
            self._dirty.add(device)
            return
        self._dirty.discard(device)
        target = eff.value
        reported = self._reported(device) or {}
        actions: list[tuple[str, int | None]] = []
        if not target.power:
            if reported.get("powerOn") is not False:
                actions.append(("turnOff", None))
        else:
            if reported.get("powerOn") is not True:
                actions.append(("turnOn", None))
            if reported.get("fanSpeed") != target.fan_speed:
                actions.append(("setFanSpeed", target.fan_speed))
        if not actions:
            self._restored_by.pop(device, None)  # the restore is complete (or was not needed)
            return
        restored_by = self._restored_by.get(device)
        source: str = LAYER_SOURCE.get(eff.layer) or restored_by or self._layers.manual_source(device) or "rule"
        if source not in SOURCES:
            source = "rule"  # a stored source this version does not know
        # One step at a time: the next one is planned from the state the device reports after this one
        # (a failed step must not be followed by the rest of a stale plan).
        action, value = actions[0]
        request = CommandRequest.create(device, action, value, source=source)
        self._reconciling.setdefault(device, set()).add(request.command_id)
        self._dirty.add(device)
        self._commands.submit(request, now)
        self._metrics.inc("gateway_reconciler_commands_total", 1, "commands the reconciler sent")
        log.info("reconciler.drive", device_id=device, layer=eff.layer.label, power=target.power,
                 fan_speed=target.fan_speed, action=action, remaining_steps=len(actions) - 1)

    def command_finished(self, record: CommandRecord, now: float) -> None:
        """A command finished: judge the reconciler's own, and drive the device again if it is due."""
        device = record.device
        mine = self._reconciling.get(device)
        if mine is not None and record.command_id in mine:
            mine.discard(record.command_id)
            ok = record.status.value == "acked" and reached(device_command(record.action, record.value),
                                                            self._reported(device) or {})
            if ok:
                self._backoff.pop(device, None)
            else:
                # Failed, timed out, or acked without the device getting there: wait before driving it
                # again, doubling each time (a device that says "ok" and stays put must not be stormed).
                old = self._backoff.get(device)
                delay = min(old.delay * 2, self._settings.retry_backoff_max_seconds) if old else \
                    self._settings.retry_backoff_seconds
                self._backoff[device] = _Backoff(now + delay, delay)
                self._dirty.add(device)
                log.warning("reconciler.backoff", device_id=device, seconds=delay, status=record.status.value,
                            action=record.action)
        if device in self._dirty and not self._commands.busy(device):
            self.reconcile(device, now)

    def tick(self, now: float) -> None:
        """Devices whose back-off ended while a change waited."""
        for device, backoff in list(self._backoff.items()):
            if now >= backoff.until and device in self._dirty:
                self.reconcile(device, now)

    def next_deadline(self, now: float) -> float | None:
        """The earliest back-off still running."""
        return min((b.until for b in self._backoff.values() if b.until > now), default=None)
