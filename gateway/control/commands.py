"""The command executor's state machine (CONTRACT section 1), with no I/O.

Driven by events — :meth:`CommandExecutor.submit`, :meth:`~CommandExecutor.device_online`,
:meth:`~CommandExecutor.device_offline`, :meth:`~CommandExecutor.ack`, :meth:`~CommandExecutor.tick`,
:meth:`~CommandExecutor.cancel` — each returning the effects (gateway/control/command_model.py) the caller
performs in order.

Rules:

* statuses ``pending -> sent -> acked | failed | timeout | cancelled`` (``pending -> cancelled`` too);
* at most one command in flight (``sent``) per device; others wait in a FIFO per device, bounded by
  ``max_pending`` (overflow: :class:`CommandQueueFull` is raised and nothing changes);
* a command for an offline device stays ``pending`` (its audit note says so) and is sent when the device
  comes online;
* no ack within ``timeout`` (default 30 s) -> resend with the same commandId and payload, ``attempts``
  in all (default 3), then ``timeout``;
* a retry that falls due while the device is offline is deferred, not spent: it is sent the moment the
  device is back online. After the last attempt's deadline the command times out whether online or not;
* an ack is accepted only from the device the command was sent to; acks for unknown, finished or
  someone else's commands are ignored and reported. An ``error`` ack marks the command ``failed``;
* every attempt has its entry in the record's ``attempt_log`` (gateway/control/attempts.py): when it left
  and how it ended (no ack, not sent, acked, failed, cancelled).

``now`` is wall-clock epoch seconds from the injected Clock; it stamps the audit and drives deadlines.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field, replace

from gateway.control import attempts
from gateway.control.command_model import (
    Audit,
    CommandError,
    CommandQueueFull,
    CommandRecord,
    CommandRequest,
    CommandStatus,
    Effect,
    Finished,
    Ignored,
    Send,
    StateReported,
)
from gateway.core.device_commands import Ack

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_ATTEMPTS = 3
DEFAULT_MAX_PENDING = 32
_REMEMBER_FINISHED = 4096


def _send(record: CommandRecord) -> Send:
    """The one place a command becomes an attempt for its link (the first and every retry)."""
    return Send(record.outgoing(), record.attempts)


# ------------------------------------------------------------------------------------------ executor


@dataclass(slots=True)
class _InFlight:
    record: CommandRecord
    deadline: float
    retry_due: bool = False  # the deadline passed while the device was offline


@dataclass(slots=True)
class _Device:
    online: bool = False
    queue: deque[CommandRecord] = field(default_factory=deque)
    in_flight: _InFlight | None = None


class CommandExecutor:
    """Per-device command queues with one command in flight each. Owned by one task; no I/O."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not timeout > 0 or attempts < 1 or max_pending < 1:
            raise ValueError("timeout must be > 0, attempts >= 1, max_pending >= 1")
        self.timeout = timeout
        self.attempts = attempts
        self.max_pending = max_pending
        self._devices: dict[str, _Device] = {}
        self._owner: dict[str, str] = {}  # command id -> device, for live commands
        self._finished: OrderedDict[str, CommandStatus] = OrderedDict()  # bounded memory of recent ones

    # ---- queries
    def get(self, command_id: str) -> CommandRecord | None:
        device = self._owner.get(command_id)
        if device is None:
            return None
        dev = self._devices[device]
        if dev.in_flight is not None and dev.in_flight.record.command_id == command_id:
            return dev.in_flight.record
        return next((r for r in dev.queue if r.command_id == command_id), None)

    def in_flight(self, device: str) -> CommandRecord | None:
        dev = self._devices.get(device)
        return dev.in_flight.record if dev and dev.in_flight else None

    def pending(self, device: str) -> list[CommandRecord]:
        dev = self._devices.get(device)
        return list(dev.queue) if dev else []

    def is_online(self, device: str) -> bool:
        dev = self._devices.get(device)
        return dev is not None and dev.online

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has work next (None: nothing is waiting on time)."""
        times = [d.in_flight.deadline for d in self._devices.values() if d.in_flight and not d.in_flight.retry_due]
        return min(times, default=None)

    # ---- events
    def submit(self, request: CommandRequest, now: float) -> list[Effect]:
        if request.command_id in self._owner or request.command_id in self._finished:
            raise CommandError("commandId", f"{request.command_id!r} was already submitted")
        dev = self._devices.setdefault(request.device, _Device())
        if len(dev.queue) >= self.max_pending:
            raise CommandQueueFull(f"{request.device}: {self.max_pending} commands already pending")
        note = None if dev.online else "queued: device offline, sent when it comes back online"
        record = CommandRecord(
            request.command_id, request.device, request.action, request.value, request.source,
            CommandStatus.PENDING, 0, now, note=note, cause=request.cause,
        )
        dev.queue.append(record)
        self._owner[record.command_id] = record.device
        effects: list[Effect] = [Audit(record, "created" if dev.online else "queued")]
        effects += self._dispatch(dev, now)
        return effects

    def device_online(self, device: str, now: float) -> list[Effect]:
        dev = self._devices.setdefault(device, _Device())
        dev.online = True
        if dev.in_flight is not None and dev.in_flight.retry_due:
            return self._resend(dev, now)
        return self._dispatch(dev, now)

    def device_offline(self, device: str, now: float) -> list[Effect]:
        self._devices.setdefault(device, _Device()).online = False
        return []

    def ack(self, device: str, ack: Ack, now: float) -> list[Effect]:
        """An ack arrived on ``device/{device}/ack`` (already decoded by the device's driver)."""
        owner = self._owner.get(ack.command_id)
        if owner is None:
            status = self._finished.get(ack.command_id)
            reason = f"command already finished ({status})" if status else "unknown command"
            return [Ignored(device, ack.command_id, reason, ack)]
        if owner != device:
            return [Ignored(device, ack.command_id, f"command belongs to device {owner!r}", ack)]
        dev = self._devices[device]
        if dev.in_flight is None or dev.in_flight.record.command_id != ack.command_id:
            return [Ignored(device, ack.command_id, "command not sent yet (pending)", ack)]
        status = CommandStatus.ACKED if ack.ok else CommandStatus.FAILED
        flight = dev.in_flight.record
        record = replace(flight, status=status, finished_at=now, error=ack.error, state=ack.state,
                         attempt_log=attempts.ended(flight.attempt_log, status.value, ack.error))
        dev.in_flight = None
        effects: list[Effect] = []
        if ack.state:
            effects.append(StateReported(device, ack.state, now))
        effects += self._finish(record)
        effects += self._dispatch(dev, now)
        return effects

    def tick(self, now: float) -> list[Effect]:
        """Handle every deadline that has passed: retry, defer (offline) or time out."""
        effects: list[Effect] = []
        for device in sorted(self._devices):
            dev = self._devices[device]
            flight = dev.in_flight
            if flight is None or flight.retry_due or now < flight.deadline:
                continue
            if flight.record.attempts >= self.attempts:
                record = replace(flight.record, status=CommandStatus.TIMEOUT, finished_at=now,
                                 error=f"no ack after {flight.record.attempts} attempts",
                                 attempt_log=attempts.ended(flight.record.attempt_log, attempts.NO_ACK))
                dev.in_flight = None
                effects += self._finish(record)
                effects += self._dispatch(dev, now)
            elif dev.online:
                effects += self._resend(dev, now)
            else:
                flight.retry_due = True
        return effects

    def cancel(self, command_id: str, now: float, reason: str = "cancelled") -> list[Effect]:
        """Cancel a pending or in-flight command; [] if it is unknown or finished."""
        device = self._owner.get(command_id)
        if device is None:
            return []
        dev = self._devices[device]
        if dev.in_flight is not None and dev.in_flight.record.command_id == command_id:
            record = dev.in_flight.record
            record = replace(record, attempt_log=attempts.ended(record.attempt_log, "cancelled", reason))
            dev.in_flight = None
        else:
            record = next(r for r in dev.queue if r.command_id == command_id)
            dev.queue.remove(record)
        effects = self._finish(replace(record, status=CommandStatus.CANCELLED, finished_at=now, error=reason))
        return effects + self._dispatch(dev, now)

    def not_sent(self, command_id: str, attempt: int, error: str) -> list[Effect]:
        """The link could not send this attempt: its log entry says so (it is retried at its deadline)."""
        device = self._owner.get(command_id)
        dev = self._devices.get(device) if device is not None else None
        if dev is None or dev.in_flight is None or dev.in_flight.record.command_id != command_id:
            return []  # finished meanwhile (or cancelled): nothing to note
        record = dev.in_flight.record
        record = replace(record, attempt_log=attempts.not_sent(record.attempt_log, attempt, error))
        dev.in_flight.record = record
        return [Audit(record, attempts.NOT_SENT)]

    def cancel_pending(self, device: str, now: float, reason: str = "superseded") -> list[Effect]:
        """Cancel every queued (not yet sent) command of a device, e.g. when desired state changed again."""
        dev = self._devices.get(device)
        if dev is None:
            return []
        effects: list[Effect] = []
        while dev.queue:
            record = dev.queue.popleft()
            effects += self._finish(replace(record, status=CommandStatus.CANCELLED, finished_at=now, error=reason))
        return effects

    # ---- internals
    def _dispatch(self, dev: _Device, now: float) -> list[Effect]:
        if not dev.online or dev.in_flight is not None or not dev.queue:
            return []
        queued = dev.queue.popleft()
        record = replace(queued, status=CommandStatus.SENT, attempts=1, sent_at=now, last_sent_at=now,
                         attempt_log=attempts.started((), 1, now))
        dev.in_flight = _InFlight(record, now + self.timeout)
        return [_send(record), Audit(record, "sent")]

    def _resend(self, dev: _Device, now: float) -> list[Effect]:
        assert dev.in_flight is not None
        old = dev.in_flight.record
        record = replace(old, attempts=old.attempts + 1, last_sent_at=now,
                         attempt_log=attempts.started(old.attempt_log, old.attempts + 1, now))
        dev.in_flight = _InFlight(record, now + self.timeout)
        return [_send(record), Audit(record, "retried")]

    def _finish(self, record: CommandRecord) -> list[Effect]:
        del self._owner[record.command_id]
        self._finished[record.command_id] = record.status
        while len(self._finished) > _REMEMBER_FINISHED:
            self._finished.popitem(last=False)
        return [Audit(record, record.status.value), Finished(record)]
