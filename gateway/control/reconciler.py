"""The reconciler: drives each device towards its effective desired state, one command at a time.

It compares the winning layer's value with what the device last reported (readings and acks) and
submits the next command needed to get there. It runs when a layer changes or expires, when the device
comes online, and at start-up; never while the device still has commands queued, in flight, or finished
but not yet reported (it runs again when they are). A manual command while a higher layer is in effect is
carried out; the higher layer takes the device back at its next change.

**Back-off.** After a failure (its own command refused, timed out, or acked without the device getting
there; or a person's command that failed or timed out, whose setting the manual layer holds) it waits
before driving the device again: ``retry_backoff_seconds``, doubling after each failure in a row up to
``retry_backoff_max_seconds``. After ``redrive_limit`` failures in a row it stops driving the device until
a layer changes, a person sends a command, or the device reconnects (each a fresh start).

**Audit.** Its commands say ``source = "reconcile"`` and ``cause`` = the layer that made it send them: the
winning layer, or for a return to the manual setting after an override ended, that override (the same
label however the override ended: expiry, cancel, or while the gateway was down), else ``manual``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from gateway.control.command_model import AUTOMATIC, CommandRecord, CommandRequest, CommandStatus
from gateway.control.command_service import CommandService
from gateway.control.desired import Effective, Layer
from gateway.control.layers import Layers
from gateway.core.device_commands import device_command, reached
from gateway.core.metrics import Metrics

if TYPE_CHECKING:
    from gateway.settings import ControlSection

log = structlog.get_logger(__name__)

Reported = Callable[[str], Mapping[str, Any] | None]

_FAILED = (CommandStatus.FAILED, CommandStatus.TIMEOUT)


@dataclass(slots=True)
class _Backoff:
    until: float
    delay: float
    failures: int  # failed drives in a row


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
        self._gave_up: set[str] = set()  # devices not driven until a fresh start (redrive_limit reached)
        self._restored_by: dict[str, str] = {}  # device -> the override (layer label) whose end returns it to manual
        self._dirty: set[str] = set()  # a layer changed while the device was busy: reconcile when it is free
        self._reconciling: dict[str, set[str]] = {}  # device -> ids of commands the reconciler submitted

    def layer_changed(self, device: str, now: float, ended: str | None = None) -> None:
        """A layer was set, changed or ended (`ended`: the label of the layer that ended)."""
        self._fresh_start(device)  # new intent: try at once
        if ended is not None:
            self._restored_by[device] = ended
        self.reconcile(device, now)

    def manual_set(self, device: str) -> None:
        """A person's command set the manual layer: a new intent, and re-drives of it restore no override."""
        self._fresh_start(device)
        self._restored_by.pop(device, None)

    def device_ready(self, device: str, now: float) -> None:
        """The device came (back) online: a reconnect is a fresh chance."""
        self._fresh_start(device)
        self.reconcile(device, now)

    def _fresh_start(self, device: str) -> None:
        self._backoff.pop(device, None)
        self._gave_up.discard(device)

    def reconcile(self, device: str, now: float) -> None:
        if not self._known(device):
            return
        eff = self._layers.desired.effective(device, now)
        self._desired(device, eff)
        if eff is None or not self._commands.executor.is_online(device) or device in self._gave_up:
            return  # nothing wanted, applied when the device comes online, or given up until a fresh start
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
        cause = eff.layer.label if eff.layer is not Layer.MANUAL else \
            self._restored_by.get(device, Layer.MANUAL.label)
        # One step at a time: the next one is planned from the state the device reports after this one
        # (a failed step must not be followed by the rest of a stale plan).
        action, value = actions[0]
        request = CommandRequest.create(device, action, value, source=AUTOMATIC, cause=cause)
        self._reconciling.setdefault(device, set()).add(request.command_id)
        self._dirty.add(device)
        self._commands.submit(request, now)
        self._metrics.inc("gateway_reconciler_commands_total", 1, "commands the reconciler sent")
        log.info("reconciler.drive", device_id=device, layer=eff.layer.label, cause=cause, power=target.power,
                 fan_speed=target.fan_speed, action=action, remaining_steps=len(actions) - 1)

    def command_finished(self, record: CommandRecord, now: float) -> None:
        """A command finished: judge it, and drive the device again if that is due."""
        device = record.device
        mine = self._reconciling.get(device)
        own = mine is not None and record.command_id in mine
        if own:
            assert mine is not None
            mine.discard(record.command_id)
            # Acked without the device getting there counts as a failure: a device that says "ok" and stays
            # put must not be stormed.
            failed = not (record.status is CommandStatus.ACKED and reached(
                device_command(record.action, record.value), self._reported(device) or {}))
        else:
            failed = record.status in _FAILED  # a person's command: the manual layer still wants its state
        if failed:
            self._failed(record, now)
        elif record.status is CommandStatus.ACKED:
            self._backoff.pop(device, None)
        if device in self._dirty and not self._commands.busy(device):
            self.reconcile(device, now)

    def _failed(self, record: CommandRecord, now: float) -> None:
        device = record.device
        old = self._backoff.get(device)
        failures = old.failures + 1 if old else 1
        if failures >= self._settings.redrive_limit:
            self._backoff.pop(device, None)
            self._gave_up.add(device)
            self._dirty.discard(device)
            self._metrics.inc("gateway_reconciler_gave_up_total", 1, "devices the reconciler stopped driving")
            log.warning("reconciler.gave_up", device_id=device, failures=failures, status=record.status.value,
                        action=record.action, until="a layer changes, a command is sent or the device reconnects")
            return
        delay = min(old.delay * 2, self._settings.retry_backoff_max_seconds) if old else \
            self._settings.retry_backoff_seconds
        self._backoff[device] = _Backoff(now + delay, delay, failures)
        self._dirty.add(device)
        log.warning("reconciler.backoff", device_id=device, seconds=delay, failures=failures,
                    status=record.status.value, action=record.action, source=record.source)

    def tick(self, now: float) -> None:
        """Devices whose back-off ended while a change waited."""
        for device, backoff in list(self._backoff.items()):
            if now >= backoff.until and device in self._dirty:
                self.reconcile(device, now)

    def next_deadline(self, now: float) -> float | None:
        """The earliest back-off still running."""
        return min((b.until for b in self._backoff.values() if b.until > now), default=None)
