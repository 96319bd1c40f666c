"""The control tables: what the control service reads back at start-up and the rows it writes.

Tables: ``command_log`` (audit of every command), ``schedules``, ``schedule_runs`` (their history) and
``desired_layers`` (the layers that survive a restart: manual setting, running pre-clean); plus the
``device_state`` row an ack's state updates.

Reads take an open connection (the writer's, before the control task starts) and use bound parameters
only. Writes are :class:`~gateway.core.models.RowWrite` records the caller hands to the store writer like
any other record, so the writer's connection stays the one that writes. Rows are plain values: this
module knows columns, not the control service's types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import aiosqlite

from gateway.core.models import RowWrite

# --------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True, slots=True)
class StoredSchedule:
    id: int
    device: str
    days: tuple[int, ...]  # weekday numbers, Monday = 0, ascending
    start: str  # "HH:MM", local time
    end: str
    fan_speed: int
    enabled: bool
    created_at: float


@dataclass(frozen=True, slots=True)
class StoredRun:
    """One window of a schedule, as its start and end rows in the history name it."""

    schedule_id: int
    device: str
    window_start: float
    window_end: float
    fan_speed: int


@dataclass(frozen=True, slots=True)
class StoredLayer:
    device: str
    layer: str  # "manual" | "preclean"
    power: bool
    fan_speed: int
    expires_at: float | None
    started_at: float
    source: str


@dataclass(frozen=True, slots=True)
class UnfinishedCommand:
    """A command still ``pending`` or ``sent`` in the audit log (its queue was in memory)."""

    command_id: str
    device: str
    action: str
    value: int | None
    source: str
    attempts: int
    created_at: float
    sent_at: float | None
    last_sent_at: float | None
    note: str | None
    cause: str | None = None
    attempt_log: Any = None  # the stored JSON list, parsed (None: no attempt yet)


class JsonItem(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class CommandFields(Protocol):
    """What an audit row holds (the control service's command record has these attributes)."""

    @property
    def command_id(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def value(self) -> int | None: ...
    @property
    def source(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def created_at(self) -> float: ...
    @property
    def sent_at(self) -> float | None: ...
    @property
    def last_sent_at(self) -> float | None: ...
    @property
    def finished_at(self) -> float | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def state(self) -> dict[str, Any] | None: ...
    @property
    def note(self) -> str | None: ...
    @property
    def cause(self) -> str | None: ...
    @property
    def attempt_log(self) -> tuple[JsonItem, ...]: ...


# -------------------------------------------------------------------------------------------- reads


async def load_schedules(conn: aiosqlite.Connection) -> list[StoredSchedule]:
    """Every stored schedule, by id."""
    async with conn.execute(
        "SELECT id, device_id, days, start, end, fan_speed, enabled, created_at FROM schedules ORDER BY id"
    ) as cur:
        rows = await cur.fetchall()
    return [StoredSchedule(sid, device, tuple(json.loads(days)), start, end, fan, bool(enabled), created)
            for sid, device, days, start, end, fan, enabled, created in rows]


async def schedule_id_high_water(conn: aiosqlite.Connection) -> int:
    """The highest schedule id ever given (AUTOINCREMENT's counter: a deleted id is never reused)."""
    async with conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", ("schedules",)) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def run_starts_open_at(conn: aiosqlite.Connection, now: float) -> set[tuple[int, float]]:
    """(schedule id, window start) of every recorded start whose window has not ended by ``now``."""
    async with conn.execute(
        "SELECT schedule_id, window_start FROM schedule_runs WHERE phase = ? AND window_end > ?", ("start", now)
    ) as cur:
        return {(sid, start) for sid, start in await cur.fetchall()}


async def runs_ended_unrecorded(conn: aiosqlite.Connection, now: float) -> list[StoredRun]:
    """Windows with a start row that ended by ``now`` and have no end row (the gateway was down)."""
    async with conn.execute(
        "SELECT s.schedule_id, s.device_id, s.window_start, s.window_end, s.fan_speed FROM schedule_runs s "
        "WHERE s.phase = ? AND s.window_end <= ? AND NOT EXISTS (SELECT 1 FROM schedule_runs e "
        "WHERE e.phase = ? AND e.schedule_id = s.schedule_id AND e.window_start = s.window_start)",
        ("start", now, "end"),
    ) as cur:
        rows = await cur.fetchall()
    return [StoredRun(sid, device, start, end, fan) for sid, device, start, end, fan in rows]


async def recent_runs(conn: aiosqlite.Connection, per_schedule: int) -> list[tuple[int, str, float, int]]:
    """The latest ``per_schedule`` history rows of each schedule: (schedule id, phase, at, fan speed), oldest first."""
    async with conn.execute(
        "SELECT schedule_id, phase, at, fan_speed FROM (SELECT schedule_id, phase, at, fan_speed, id, "
        "row_number() OVER (PARTITION BY schedule_id ORDER BY at DESC, id DESC) AS n FROM schedule_runs) "
        "WHERE n <= ? ORDER BY at, id",
        (per_schedule,),
    ) as cur:
        return [(sid, phase, at, fan) for sid, phase, at, fan in await cur.fetchall()]


async def load_layers(conn: aiosqlite.Connection) -> list[StoredLayer]:
    async with conn.execute(
        "SELECT device_id, layer, power, fan_speed, expires_at, started_at, source FROM desired_layers"
    ) as cur:
        rows = await cur.fetchall()
    return [StoredLayer(device, layer, bool(power), int(fan), expires_at, started_at, source)
            for device, layer, power, fan, expires_at, started_at, source in rows]


async def unfinished_commands(conn: aiosqlite.Connection) -> list[UnfinishedCommand]:
    async with conn.execute(
        "SELECT command_id, device_id, action, value, source, attempts, created_at, sent_at, last_sent_at, note, "
        "cause, attempt_log FROM command_log WHERE status IN (?, ?)",
        ("pending", "sent"),
    ) as cur:
        rows = await cur.fetchall()
    return [UnfinishedCommand(cid, device, action, value, source, attempts, created, sent, last_sent, note, cause,
                              json.loads(log) if log else None)
            for cid, device, action, value, source, attempts, created, sent, last_sent, note, cause, log in rows]


# ------------------------------------------------------------------------------------------- writes


def command_row(record: CommandFields) -> RowWrite:
    """Upsert of one command's audit row (by command id)."""
    return RowWrite("command_log", {
        "command_id": record.command_id,
        "device_id": record.device,
        "action": record.action,
        "value": record.value,
        "source": record.source,
        "status": str(record.status),
        "attempts": record.attempts,
        "created_at": record.created_at,
        "sent_at": record.sent_at,
        "last_sent_at": record.last_sent_at,
        "finished_at": record.finished_at,
        "error": record.error,
        "state": record.state,
        "note": record.note,
        "cause": record.cause,
        "attempt_log": [attempt.to_json() for attempt in record.attempt_log] or None,
    })


def schedule_row(schedule: StoredSchedule, *, updated_at: float) -> RowWrite:
    # Every column, also on update: SQLite checks NOT NULL on the row to insert before it sees the conflict.
    return RowWrite("schedules", {
        "id": schedule.id,
        "device_id": schedule.device,
        "days": list(schedule.days),
        "start": schedule.start,
        "end": schedule.end,
        "fan_speed": schedule.fan_speed,
        "enabled": schedule.enabled,
        "updated_at": updated_at,
        "created_at": schedule.created_at,
    })


def schedule_delete(schedule_id: int) -> RowWrite:
    return RowWrite("schedules", {"id": schedule_id}, delete=True)


def run_row(run: StoredRun, phase: str, at: float) -> RowWrite:
    """A history row: the window's ``start`` or ``end`` phase, recorded at ``at``."""
    return RowWrite("schedule_runs", {
        "schedule_id": run.schedule_id, "device_id": run.device, "phase": phase, "window_start": run.window_start,
        "window_end": run.window_end, "fan_speed": run.fan_speed, "at": at,
    })


def layer_row(layer: StoredLayer) -> RowWrite:
    return RowWrite("desired_layers", {
        "device_id": layer.device, "layer": layer.layer, "power": layer.power, "fan_speed": layer.fan_speed,
        "expires_at": layer.expires_at, "started_at": layer.started_at, "source": layer.source,
    })


def layer_delete(device: str, layer: str) -> RowWrite:
    return RowWrite("desired_layers", {"device_id": device, "layer": layer}, delete=True)


def device_state_row(device: str, metrics: dict[str, Any]) -> RowWrite:
    """The device's latest metrics with an ack's state laid over them."""
    return RowWrite("device_state", {"device_id": device, "last_metrics": metrics})
