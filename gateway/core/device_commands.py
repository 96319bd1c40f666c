"""Domain commands: what control asks a device to do, in no protocol's words.

Control (commands, reconciler, schedules, pre-clean) speaks these; a driver turns them into its wire form
(JSON on an MQTT topic, a Modbus register write, a GATT write) and turns the device's answer into an
:class:`Ack`. The action names (`setFanSpeed`, `turnOn`, `turnOff`) are the API's and the audit log's
vocabulary, so a command keeps one name from the request to the audit row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Action = Literal["setFanSpeed", "turnOn", "turnOff"]
ACTIONS: tuple[Action, ...] = ("setFanSpeed", "turnOn", "turnOff")


@dataclass(frozen=True, slots=True)
class SetFanSpeed:
    value: int
    action: ClassVar[Action] = "setFanSpeed"


@dataclass(frozen=True, slots=True)
class TurnOn:
    action: ClassVar[Action] = "turnOn"

    @property
    def value(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class TurnOff:
    action: ClassVar[Action] = "turnOff"

    @property
    def value(self) -> None:
        return None


DeviceCommand = SetFanSpeed | TurnOn | TurnOff


def device_command(action: Action, value: int | None) -> DeviceCommand:
    """The domain command of an (action, value) pair already checked by the command service."""
    if action == "setFanSpeed":
        assert value is not None
        return SetFanSpeed(value)
    return TurnOn() if action == "turnOn" else TurnOff()


@dataclass(frozen=True, slots=True)
class OutgoingCommand:
    """One command as a link sends it. Every attempt carries the same id and `issued_at` (the first send),
    so a retry is the same message and a device that already did it only acknowledges it again."""

    command_id: str
    device_id: str
    command: DeviceCommand
    issued_at: float


@dataclass(frozen=True, slots=True)
class Ack:
    """A device's answer to a command: done (`ok`) or refused (`error`), and the state it reports now
    (domain keys: `fanSpeed`, `powerOn`) when it says."""

    command_id: str
    ok: bool
    error: str | None
    state: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)


def acked_state(command: DeviceCommand) -> dict[str, Any]:
    """What an "ok" without a state tells: the command's own effect."""
    if isinstance(command, SetFanSpeed):
        return {"fanSpeed": command.value}
    return {"powerOn": isinstance(command, TurnOn)}


def reached(command: DeviceCommand, reported: Any) -> bool:
    """Does a device's reported state (a mapping of domain keys) show what `command` asked for?"""
    if isinstance(command, TurnOn):
        return reported.get("powerOn") is True
    if isinstance(command, TurnOff):
        return reported.get("powerOn") is False
    return bool(reported.get("fanSpeed") == command.value)
