"""Weekly schedules: model, validation, active windows and the instants at which they change.

A schedule is ``{id, device, days, start "HH:MM", end "HH:MM", fan_speed 1-5, enabled}`` in the gateway's
local timezone (the config's ``timezone``), passed explicitly as ``tz`` to every function here.

Rules (tested in tests/unit/test_control_schedules.py):

* **Window.** For each day in ``days`` the window runs from ``start`` on that day until ``end``; it is
  half-open: active at its start instant, no longer active at its end instant.
* **Midnight.** ``end`` earlier than ``start`` means the window crosses midnight and ends on the next
  day: ``Sun 22:00-06:00`` runs Sunday 22:00 to Monday 06:00, and ``days`` names the day it *starts*.
  ``end == start`` is refused (zero length or 24 hours would be a guess). ``22:00-00:00`` ends at midnight.
* **Overlaps.** When several windows of a device are active, the winner is the one with the highest
  ``fan_speed``; ties go to the window that started earliest (the one already running keeps the device),
  then to the lowest schedule ``id``. :func:`active_windows` returns the windows in this order.
* **DST, spring forward** (e.g. Europe/Berlin, 02:00 -> 03:00): a wall time that does not exist that day
  is moved forward by the length of the gap, as PEP 495 (``fold=0``) does: a 02:30 start runs once, at
  03:30 local. A window whose moved start is not before its end does not run that day.
* **DST, autumn fall-back** (03:00 -> 02:00): a wall time that occurs twice means its *first* occurrence
  (summer time, ``fold=0``). Each (schedule, start day) gives exactly one window, so nothing runs twice.
* **Timer.** :func:`next_transition` gives the next instant anything changes; whoever wakes then
  re-evaluates with :func:`schedule_decision` (idempotent) and tells a new run from one already applied
  by :attr:`Window.key`, so an early, doubled or late wake-up changes nothing.
* **Start-up.** A window already in effect at a given instant is reported by :func:`active_windows`, so
  applying :func:`schedule_decision` at start-up picks it up at once.

All instants returned are timezone-aware UTC datetimes (comparing aware datetimes that share a tzinfo
compares wall times and ignores ``fold``, which is wrong across a fall-back, so everything is in UTC).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal

from gateway.control.desired import FanState
from gateway.core.errors import GatewayError

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_SHORT_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
SCHEDULE_FAN_MIN = 1
SCHEDULE_FAN_MAX = 5

Boundary = Literal["start", "end"]


class ScheduleError(GatewayError, ValueError):
    """A schedule is invalid; ``field`` names the offending field (JSON name) for a 400 answer."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Schedule:
    """One weekly schedule. ``days`` holds weekday numbers, Monday = 0 (as ``date.weekday()``)."""

    id: int
    device: str
    days: frozenset[int]
    start: time
    end: time
    fan_speed: int
    enabled: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int):
            raise ScheduleError("id", f"expected a whole number, got {self.id!r}")
        if not isinstance(self.device, str) or not self.device.strip():
            raise ScheduleError("device", "expected a non-empty device id")
        if not self.days:
            raise ScheduleError("days", "at least one day is required")
        if any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 6 for d in self.days):
            raise ScheduleError("days", f"weekday numbers must be 0 (Mon) .. 6 (Sun), got {sorted(self.days)!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, time) or value.tzinfo is not None or value.second or value.microsecond:
                raise ScheduleError(name, f"expected a whole minute without a zone, got {value!r}")
        if self.start == self.end:
            raise ScheduleError("end", f"must differ from start ({format_hhmm(self.start)}); "
                                "an end before the start means the window crosses midnight")
        if isinstance(self.fan_speed, bool) or not isinstance(self.fan_speed, int):
            raise ScheduleError("fanSpeed", f"expected a whole number, got {self.fan_speed!r}")
        if not SCHEDULE_FAN_MIN <= self.fan_speed <= SCHEDULE_FAN_MAX:
            raise ScheduleError("fanSpeed", f"{self.fan_speed} out of range {SCHEDULE_FAN_MIN}..{SCHEDULE_FAN_MAX}")
        if not isinstance(self.enabled, bool):
            raise ScheduleError("enabled", f"expected true/false, got {self.enabled!r}")

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def to_json(self) -> dict[str, object]:
        """The API/JSON form (inverse of :func:`parse_schedule`)."""
        return {
            "id": self.id,
            "device": self.device,
            "days": [DAY_NAMES[d] for d in sorted(self.days)],
            "start": format_hhmm(self.start),
            "end": format_hhmm(self.end),
            "fanSpeed": self.fan_speed,
            "enabled": self.enabled,
        }


def format_hhmm(value: time) -> str:
    return f"{value.hour:02d}:{value.minute:02d}"


def parse_hhmm(value: object, field: str) -> time:
    if not isinstance(value, str) or not (m := _HHMM.fullmatch(value)):
        raise ScheduleError(field, f"expected HH:MM between 00:00 and 23:59, got {value!r}")
    return time(int(m.group(1)), int(m.group(2)))


def parse_days(value: object) -> frozenset[int]:
    """``["Mon", "wed", "Sunday"]`` -> {0, 2, 6}. Duplicates and unknown names are errors."""
    if not isinstance(value, list | tuple):
        raise ScheduleError("days", f"expected a list of day names (Mon..Sun), got {type(value).__name__}")
    if not value:
        raise ScheduleError("days", "at least one day is required")
    days: set[int] = set()
    for i, item in enumerate(value):
        key = item.strip().lower() if isinstance(item, str) else None
        if key in _SHORT_DAY_NAMES:
            day = _SHORT_DAY_NAMES.index(key)
        elif key in _FULL_DAY_NAMES:
            day = _FULL_DAY_NAMES.index(key)
        else:
            raise ScheduleError(f"days[{i}]", f"expected one of {', '.join(DAY_NAMES)}, got {item!r}")
        if day in days:
            raise ScheduleError(f"days[{i}]", f"{DAY_NAMES[day]} is listed twice")
        days.add(day)
    return frozenset(days)


def parse_schedule(data: Mapping[str, object], *, schedule_id: int) -> Schedule:
    """Validate the JSON form ``{device, days, start, end, fanSpeed, enabled?}``.

    Raises :class:`ScheduleError` naming the first bad field. ``enabled`` defaults to true; other fields
    are required. Keys we do not know are not our business and are ignored (the caller may store them).
    """
    if not isinstance(data, Mapping):
        raise ScheduleError("(body)", f"expected a JSON object, got {type(data).__name__}")
    for key in ("device", "days", "start", "end", "fanSpeed"):
        if key not in data:
            raise ScheduleError(key, "is required")
    device = data["device"]
    if not isinstance(device, str) or not device.strip():
        raise ScheduleError("device", f"expected a non-empty device id, got {device!r}")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ScheduleError("enabled", f"expected true/false, got {enabled!r}")
    fan = data["fanSpeed"]
    if isinstance(fan, bool) or not isinstance(fan, int):
        raise ScheduleError("fanSpeed", f"expected a whole number {SCHEDULE_FAN_MIN}..{SCHEDULE_FAN_MAX}, got {fan!r}")
    return Schedule(
        id=schedule_id,
        device=device,
        days=parse_days(data["days"]),
        start=parse_hhmm(data["start"], "start"),
        end=parse_hhmm(data["end"], "end"),
        fan_speed=fan,
        enabled=enabled,
    )


# --------------------------------------------------------------------------------------------- windows


@dataclass(frozen=True, slots=True)
class Window:
    """One occurrence of a schedule: ``start <= t < end`` (UTC instants)."""

    schedule: Schedule
    start: datetime
    end: datetime

    @property
    def key(self) -> tuple[int, float]:
        """Identifies this run: the same window seen twice (e.g. by a doubled wake-up) has the same key."""
        return (self.schedule.id, self.start.timestamp())

    def contains(self, at: datetime) -> bool:
        return self.start <= at < self.end


def _local_instant(day: date, wall: time, tz: tzinfo) -> datetime:
    # fold=0: a missing wall time moves forward by the gap, a repeated one means its first occurrence
    return datetime.combine(day, wall, tzinfo=tz).astimezone(UTC)


def window_on(schedule: Schedule, day: date, tz: tzinfo) -> Window | None:
    """The window of ``schedule`` that starts on local ``day``, if it runs that day."""
    if day.weekday() not in schedule.days:
        return None
    end_day = day + timedelta(days=1) if schedule.crosses_midnight else day
    start = _local_instant(day, schedule.start, tz)
    end = _local_instant(end_day, schedule.end, tz)
    if end <= start:  # only when a DST gap pushed the start past the end
        return None
    return Window(schedule, start, end)


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, got {at!r}")
    return at.astimezone(UTC)


def _device_schedules(schedules: Iterable[Schedule], device: str) -> list[Schedule]:
    return [s for s in schedules if s.enabled and s.device == device]


def _windows_between(schedules: Sequence[Schedule], first: date, last: date, tz: tzinfo) -> Iterator[Window]:
    day = first
    while day <= last:
        for s in schedules:
            if (w := window_on(s, day, tz)) is not None:
                yield w
        day += timedelta(days=1)


def precedence(window: Window) -> tuple[int, float, int]:
    """Sort key of the overlap rule: highest fan speed, then earliest start, then lowest id."""
    return (-window.schedule.fan_speed, window.start.timestamp(), window.schedule.id)


def active_windows(schedules: Iterable[Schedule], device: str, at: datetime, *, tz: tzinfo) -> list[Window]:
    """Enabled windows of ``device`` in effect at ``at``, winner first (see the overlap rule)."""
    now = _utc(at)
    local_day = now.astimezone(tz).date()
    mine = _device_schedules(schedules, device)
    # a window in effect started today or (crossing midnight) yesterday; one extra day covers DST shifts
    found = [w for w in _windows_between(mine, local_day - timedelta(days=2), local_day, tz) if w.contains(now)]
    return sorted(found, key=precedence)


@dataclass(frozen=True, slots=True)
class Transition:
    """The next instant at which some window of the device starts or ends, and what happens then."""

    at: datetime
    changes: tuple[tuple[int, Boundary], ...]  # (schedule id, "start" | "end"), sorted


def next_transition(schedules: Iterable[Schedule], device: str, after: datetime, *, tz: tzinfo) -> Transition | None:
    """The first window boundary strictly after ``after``; None when the device has no enabled schedule."""
    now = _utc(after)
    local_day = now.astimezone(tz).date()
    mine = _device_schedules(schedules, device)
    best: datetime | None = None
    changes: list[tuple[int, Boundary]] = []
    # every enabled schedule starts at least once a week; a DST gap can drop one run, hence two weeks
    for w in _windows_between(mine, local_day - timedelta(days=2), local_day + timedelta(days=15), tz):
        edges: tuple[tuple[datetime, Boundary], ...] = ((w.start, "start"), (w.end, "end"))
        for instant, kind in edges:
            if instant <= now or (best is not None and instant > best):
                continue
            if best is None or instant < best:
                best, changes = instant, []
            changes.append((w.schedule.id, kind))
    if best is None:
        return None
    return Transition(best, tuple(sorted(changes)))


@dataclass(frozen=True, slots=True)
class ScheduleDecision:
    """What the schedule layer should hold at an instant: the winner's state until its end, or nothing."""

    value: FanState | None
    window: Window | None
    expires_at: float | None  # the winning window's end, epoch seconds

    @staticmethod
    def of(windows: Sequence[Window]) -> ScheduleDecision:
        if not windows:
            return ScheduleDecision(None, None, None)
        win = windows[0]
        return ScheduleDecision(FanState(power=True, fan_speed=win.schedule.fan_speed), win, win.end.timestamp())


def schedule_decision(schedules: Iterable[Schedule], device: str, at: datetime, *, tz: tzinfo) -> ScheduleDecision:
    """Idempotent evaluation for a transition, a wake-up or start-up: set or clear the schedule layer."""
    return ScheduleDecision.of(active_windows(schedules, device, at, tz=tz))


# ------------------------------------------------------------------------------------------ boundaries


def boundary_id(schedule_id: int, kind: Boundary) -> str:
    """Names one boundary of a schedule (status pages, tests): ``schedule:{id}:start`` or ``...:end``."""
    return f"schedule:{schedule_id}:{kind}"


def next_boundaries(schedule: Schedule, after: datetime, *, tz: tzinfo) -> dict[Boundary, datetime]:
    """The schedule's next window start and next window end strictly after ``after`` (none when disabled)."""
    if not schedule.enabled:
        return {}
    now = _utc(after)
    local_day = now.astimezone(tz).date()
    found: dict[Boundary, datetime] = {}
    for w in _windows_between([schedule], local_day - timedelta(days=2), local_day + timedelta(days=15), tz):
        edges: tuple[tuple[datetime, Boundary], ...] = ((w.start, "start"), (w.end, "end"))
        for instant, kind in edges:
            if instant > now and (kind not in found or instant < found[kind]):
                found[kind] = instant
    return found
