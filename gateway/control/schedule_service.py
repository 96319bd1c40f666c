"""Weekly schedules at run time: the stored set, the schedule layer it yields, and the run history.

The rules (windows, midnight, overlaps, DST) are the pure functions of gateway/control/schedules.py.
This keeps the schedules (stored as ``schedules`` rows), sets or clears each device's schedule layer
from the windows in effect, and records each window's start and end once in ``schedule_runs`` (with a
``schedule.run`` event). An overlapped window keeps running under a faster one: it ends when it ends, not
when it is outranked. A window that began before a restart is one run, not two; one that ended while the
gateway was down gets its end row at start-up. The control loop's timer wakes at :attr:`next_transition`.
Each schedule's latest runs (:data:`HISTORY_KEPT` starts and ends) are also kept in memory for its answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import structlog

from gateway.control.desired import Layer
from gateway.control.layers import Layers
from gateway.control.loop import Enqueue
from gateway.control.schedules import (
    Schedule,
    ScheduleDecision,
    ScheduleError,
    Window,
    active_windows,
    boundary_id,
    format_hhmm,
    next_boundaries,
    next_transition,
    parse_hhmm,
    parse_schedule,
)
from gateway.core.errors import NotFoundError
from gateway.core.metrics import Metrics
from gateway.core.models import DeviceEvent
from gateway.store import control_repo
from gateway.store.control_repo import StoredRun, StoredSchedule

log = structlog.get_logger(__name__)

# (device, now, the label of the layer that ended, if one did)
LayerChanged = Callable[[str, float, str | None], None]

HISTORY_KEPT = 10  # latest run rows per schedule kept in memory (the detail page reads more from the store)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of a schedule's execution history: a window's start or end, when it was recorded."""

    phase: str  # "start" | "end"
    at: float
    fan_speed: int


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _stored(schedule: Schedule, created_at: float) -> StoredSchedule:
    return StoredSchedule(schedule.id, schedule.device, tuple(sorted(schedule.days)), format_hhmm(schedule.start),
                          format_hhmm(schedule.end), schedule.fan_speed, schedule.enabled, created_at)


def _run(window: Window) -> StoredRun:
    s = window.schedule
    return StoredRun(s.id, s.device, window.start.timestamp(), window.end.timestamp(), s.fan_speed)


class ScheduleService:
    def __init__(
        self,
        *,
        timezone: str,
        layers: Layers,
        layer_changed: LayerChanged,
        queue: Enqueue,
        known: Callable[[str], bool],
        metrics: Metrics,
    ) -> None:
        self._tz = ZoneInfo(timezone)
        self._layers = layers
        self._layer_changed = layer_changed
        self._queue = queue
        self._known = known
        self._metrics = metrics
        self.schedules: dict[int, Schedule] = {}
        self._created: dict[int, float] = {}
        self._next_id = 1
        # device -> windows whose start is in the history and whose end is not yet
        self._open_runs: dict[str, dict[tuple[int, float], Window]] = {}
        self._started_before: set[tuple[int, float]] = set()  # starts recorded before a restart
        self.next_transition: float | None = None  # the next boundary of any window of a configured device
        self._due = False  # re-evaluate every device at the next tick
        self._history: dict[int, deque[RunRecord]] = {}  # schedule id -> its latest runs, oldest first

    # -------------------------------------------------------------------------------------- start-up

    def restore(self, stored: Iterable[StoredSchedule], *, high_water: int, open_starts: set[tuple[int, float]]
                ) -> None:
        """The stored schedules, the id counter, and the runs already started (before the first evaluation)."""
        for row in stored:
            self.schedules[row.id] = Schedule(row.id, row.device, frozenset(row.days), parse_hhmm(row.start, "start"),
                                              parse_hhmm(row.end, "end"), row.fan_speed, row.enabled)
            self._created[row.id] = row.created_at
        self._next_id = max([high_water, *self.schedules]) + 1
        self._started_before |= open_starts

    def restore_history(self, rows: Iterable[tuple[int, str, float, int]]) -> None:
        """The latest stored runs, (schedule id, phase, at, fan speed) oldest first."""
        for schedule_id, phase, at, fan_speed in rows:
            self._remember_run(schedule_id, RunRecord(phase, at, fan_speed))

    def history(self, schedule_id: int) -> list[RunRecord]:
        """The schedule's latest runs, newest first."""
        return list(reversed(self._history.get(schedule_id, ())))

    def _remember_run(self, schedule_id: int, run: RunRecord) -> None:
        self._history.setdefault(schedule_id, deque(maxlen=HISTORY_KEPT)).append(run)

    def end_missed_runs(self, runs: Iterable[StoredRun], now: float) -> None:
        """Windows that started, then ended while the gateway was down: their history gets its end row."""
        for run in runs:
            self._remember_run(run.schedule_id, RunRecord("end", now, run.fan_speed))
            self._queue(
                control_repo.run_row(run, "end", now),
                DeviceEvent(now, run.device, "schedule.run", {
                    "scheduleId": run.schedule_id, "phase": "end", "fanSpeed": run.fan_speed,
                    "windowStart": run.window_start, "windowEnd": run.window_end, "endedWhileDown": True,
                }),
            )
            self._layer_changed(run.device, now, Layer.SCHEDULE.label)  # its restore is the schedule's doing

    def evaluate_all(self, now: float) -> None:
        """Every device with a schedule (or a run still open): set its layer, then find the next boundary."""
        for device in sorted({s.device for s in self.schedules.values()} | set(self._open_runs)):
            self.evaluate(device, now)
        self._refresh_next_transition(now)

    # ------------------------------------------------------------------------------------------ CRUD

    def for_device(self, device: str) -> list[Schedule]:
        return [s for s in self.schedules.values() if s.device == device]

    def get(self, schedule_id: int) -> Schedule:
        schedule = self.schedules.get(schedule_id)
        if schedule is None:
            raise NotFoundError("schedule", schedule_id)
        return schedule

    def create(self, body: Mapping[str, object], now: float) -> Schedule:
        data = dict(body)
        if "device" not in data and "deviceId" in data:
            data["device"] = data.pop("deviceId")
        schedule = parse_schedule(data, schedule_id=self._next_id)
        self._require(schedule.device)
        self._next_id += 1
        self.schedules[schedule.id] = schedule
        self._created[schedule.id] = now
        self._queue(control_repo.schedule_row(_stored(schedule, now), updated_at=now))
        self._changed(schedule.device, now)
        return schedule

    def update(self, schedule_id: int, body: Mapping[str, object], now: float) -> Schedule:
        """The fields in `body` replace the stored ones; the others stay."""
        old = self.get(schedule_id)
        data: dict[str, object] = {**old.to_json(), **body}
        if "deviceId" in body:
            data["device"] = body["deviceId"]
        data.pop("deviceId", None)
        if data.get("id") != schedule_id:
            raise ScheduleError("id", "cannot be changed")
        schedule = parse_schedule(data, schedule_id=schedule_id)
        self._require(schedule.device)
        self.schedules[schedule_id] = schedule
        created_at = self._created.get(schedule_id, now)
        self._queue(control_repo.schedule_row(_stored(schedule, created_at), updated_at=now))
        for device in {old.device, schedule.device}:
            self._changed(device, now)
        return schedule

    def delete(self, schedule_id: int, now: float) -> None:
        old = self.get(schedule_id)
        del self.schedules[schedule_id]
        self._created.pop(schedule_id, None)
        self._history.pop(schedule_id, None)
        self._queue(control_repo.schedule_delete(schedule_id))
        self._changed(old.device, now)

    def _require(self, device: str) -> None:
        if not self._known(device):
            raise NotFoundError("device", device)

    def _changed(self, device: str, now: float) -> None:
        self.evaluate(device, now)
        self._refresh_next_transition(now)

    # ------------------------------------------------------------------------------------------ time

    def devices_changed(self, changed: frozenset[str]) -> bool:
        """Devices joined or left the config: True when a schedule of theirs is now due for evaluation.

        A device that left ends its open runs; one that came back starts the window it is in.
        """
        if not any(s.device in changed for s in self.schedules.values()):
            return False
        self._due = True
        return True

    def mark_due(self) -> None:
        """Re-evaluate every device at the next tick (the clock may have moved)."""
        self._due = True

    def tick(self, now: float) -> None:
        """At a boundary (or when due): re-evaluate every device and find the next boundary."""
        reached = self.next_transition is not None and now >= self.next_transition
        if not (self._due or reached):
            return
        if reached:
            self._metrics.inc("gateway_schedule_fires_total", 1, "schedule boundaries the control timer reached")
        self._due = False
        self.evaluate_all(now)

    def boundaries(self, now: float) -> dict[str, datetime]:
        """Boundary id (``schedule:{id}:start|end``) -> its next instant (UTC), for every enabled schedule."""
        after = _utc(now)
        return {boundary_id(s.id, kind): at for s in self.schedules.values()
                for kind, at in next_boundaries(s, after, tz=self._tz).items()}

    def _refresh_next_transition(self, now: float) -> None:
        after = _utc(now)
        times = []
        for device in {s.device for s in self.schedules.values() if s.enabled and self._known(s.device)}:
            t = next_transition(self.schedules.values(), device, after, tz=self._tz)
            if t is not None:
                times.append(t.at.timestamp())
        self.next_transition = min(times, default=None)

    # ------------------------------------------------------------------------------------ evaluation

    def evaluate(self, device: str, now: float) -> None:
        """Set or clear the schedule layer from the windows in effect now (idempotent)."""
        # A device no longer in the config keeps its schedules (it may come back) but runs none of them.
        windows = active_windows(self.schedules.values(), device, _utc(now), tz=self._tz) if self._known(device) else []
        decision = ScheduleDecision.of(windows)
        running = self._open_runs.setdefault(device, {})
        in_effect = {w.key for w in windows}
        for key, ended in list(running.items()):
            if key not in in_effect:  # over (or its schedule was changed or deleted)
                del running[key]
                self._record_run(ended, "end", now)
        window = decision.window
        if window is None or decision.value is None:
            if not running:
                self._open_runs.pop(device, None)
            if self._layers.desired.clear_layer(device, Layer.SCHEDULE):
                self._layer_changed(device, now, Layer.SCHEDULE.label)
            return
        if window.key not in running:
            running[window.key] = window
            if window.key in self._started_before:
                self._started_before.discard(window.key)  # began before a restart: one run, not two
            else:
                self._record_run(window, "start", now)
        entry = self._layers.desired.get_layer(device, Layer.SCHEDULE)
        expires_at = decision.expires_at
        if entry is None or entry.value != decision.value or entry.expires_at != expires_at:
            self._layers.seed_manual(device, now, by="schedule")
            self._layers.desired.set_layer(device, Layer.SCHEDULE, decision.value, expires_at)
            self._layer_changed(device, now, None)

    def _record_run(self, window: Window, phase: str, now: float) -> None:
        run = _run(window)
        if run.schedule_id in self.schedules:  # a deleted schedule's last end goes to the store only
            self._remember_run(run.schedule_id, RunRecord(phase, now, run.fan_speed))
        self._queue(
            control_repo.run_row(run, phase, now),
            DeviceEvent(now, run.device, "schedule.run", {
                "scheduleId": run.schedule_id, "phase": phase, "fanSpeed": run.fan_speed,
                "windowStart": run.window_start, "windowEnd": run.window_end,
            }),
        )
        log.info("schedule.run", schedule_id=run.schedule_id, device_id=run.device, phase=phase,
                 fan_speed=run.fan_speed)
