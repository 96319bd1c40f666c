"""What a command is, in the words the command executor and its callers share (CONTRACT section 1), with no I/O.

* :class:`CommandStatus`: ``pending -> sent -> acked | failed | timeout | cancelled``;
* :class:`CommandRequest`: a validated request (:class:`CommandError` names the bad field);
* :class:`CommandRecord`: the audit row of one command, with its ``attempt_log``;
* the effects :class:`~gateway.control.commands.CommandExecutor` returns for its caller to perform in order:
  :class:`Send` (one attempt of a command, through the device's link), :class:`Audit` (upsert the audit row by
  commandId), :class:`StateReported` (the ack's state updates the device state), :class:`Finished` (resolve
  waiters, store a ``command.result`` event) and :class:`Ignored` (an ack nobody waits for: log and count it).

``source`` says who asked: a person or the cloud (``panel``, ``api``, ``cloud``), or the reconciler
(``reconcile``), whose commands also name the layer that caused them (``cause``: ``manual`` for a re-drive
of a person's setting, ``schedule``, ``preclean``, ``rule``; a restore after an override ended names the
override).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from gateway.control.attempts import AttemptLog
from gateway.control.desired import Layer
from gateway.core.device_commands import Ack, OutgoingCommand, device_command
from gateway.core.errors import GatewayError

Action = Literal["setFanSpeed", "turnOn", "turnOff"]
ACTIONS: tuple[Action, ...] = ("setFanSpeed", "turnOn", "turnOff")
# "schedule", "preclean" and "rule" are kept for audit rows written before the reconciler said "reconcile".
Source = Literal["panel", "api", "cloud", "reconcile", "schedule", "preclean", "rule"]
SOURCES: tuple[Source, ...] = ("panel", "api", "cloud", "reconcile", "schedule", "preclean", "rule")
AUTOMATIC: Source = "reconcile"
CAUSES: tuple[str, ...] = tuple(layer.label for layer in Layer)  # what made the reconciler send a command


class CommandStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    ACKED = "acked"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (CommandStatus.PENDING, CommandStatus.SENT)


class CommandError(GatewayError, ValueError):
    """A command request is invalid (answer 400 / JSON-RPC -32602); ``field`` names the bad field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CommandQueueFull(GatewayError):
    """The device already has ``max_pending`` commands waiting."""


# ------------------------------------------------------------------------------------------ requests


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A validated command; build it with :meth:`create`."""

    command_id: str
    device: str
    action: Action
    value: int | None
    source: Source
    cause: str | None = None  # the layer behind an automatic command (source "reconcile")

    @staticmethod
    def create(
        device: object, action: object, value: object = None, *, source: object, command_id: str | None = None,
        cause: str | None = None,
    ) -> CommandRequest:
        if not isinstance(device, str) or not device.strip():
            raise CommandError("device", f"expected a non-empty device id, got {device!r}")
        if action not in ACTIONS:
            raise CommandError("action", f"expected one of {', '.join(ACTIONS)}, got {action!r}")
        if source not in SOURCES:
            raise CommandError("source", f"expected one of {', '.join(SOURCES)}, got {source!r}")
        if (source == AUTOMATIC) != (cause is not None) or (cause is not None and cause not in CAUSES):
            raise CommandError("cause", f"a {AUTOMATIC} command names its layer ({', '.join(CAUSES)}), any other "
                               f"none; got source {source!r} with cause {cause!r}")
        if action == "setFanSpeed":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5:
                raise CommandError("value", f"setFanSpeed needs a whole number 0..5, got {value!r}")
        elif value is not None:
            raise CommandError("value", f"{action} takes no value (null), got {value!r}")
        cid = command_id if command_id is not None else str(uuid.uuid4())
        if not isinstance(cid, str) or not cid:
            raise CommandError("commandId", f"expected a non-empty string, got {cid!r}")
        return CommandRequest(cid, device, action, value, source, cause)


# ------------------------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """The audit row of one command (upserted by ``command_id``)."""

    command_id: str
    device: str
    action: Action
    value: int | None
    source: Source
    status: CommandStatus
    attempts: int
    created_at: float
    sent_at: float | None = None  # first send
    last_sent_at: float | None = None
    finished_at: float | None = None  # acked / failed / timeout / cancelled
    error: str | None = None
    state: dict[str, Any] | None = None  # the device's reported state from the ack
    note: str | None = None  # e.g. "queued: device offline"
    cause: str | None = None  # the layer behind an automatic command (source "reconcile")
    attempt_log: AttemptLog = ()  # one entry per attempt, in order

    def outgoing(self) -> OutgoingCommand:
        """The command as its link sends it; issued at the first send, so every retry is the same message."""
        assert self.sent_at is not None
        return OutgoingCommand(self.command_id, self.device, device_command(self.action, self.value), self.sent_at)


@dataclass(frozen=True, slots=True)
class Send:
    """Hand one attempt of a command to the device's link."""

    command: OutgoingCommand
    attempt: int

    @property
    def command_id(self) -> str:
        return self.command.command_id


@dataclass(frozen=True, slots=True)
class Audit:
    record: CommandRecord
    change: str  # created | queued | sent | retried | not-sent | acked | failed | timeout | cancelled


@dataclass(frozen=True, slots=True)
class StateReported:
    device: str
    state: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class Finished:
    record: CommandRecord


@dataclass(frozen=True, slots=True)
class Ignored:
    device: str
    command_id: str
    reason: str
    ack: Ack | None = None


Effect = Send | Audit | StateReported | Finished | Ignored
# Effects left undone at shutdown: a command not sent now is re-sent from desired state after the restart.
RUNTIME_ONLY = (Send, Ignored)
