"""The schedule service on its own: stored schedules, the schedule layer, the run history, the timer's boundary."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.control.desired import FanState, Layer
from gateway.control.schedules import ScheduleError
from gateway.core.clock import ManualClock
from gateway.core.errors import NotFoundError
from gateway.core.models import DeviceEvent, RowWrite
from gateway.store.control_repo import StoredRun, StoredSchedule
from tests.fixtures.control import Parts

BERLIN = ZoneInfo("Europe/Berlin")
MONDAY_0759 = datetime(2026, 11, 23, 7, 59, tzinfo=BERLIN).timestamp()
BODY = {"device": "AP-01", "days": ["Mon"], "start": "08:00", "end": "09:00", "fanSpeed": 4}


def parts(**kw: Any) -> Parts:
    return Parts(clock=ManualClock(MONDAY_0759), timezone="Europe/Berlin", **kw)


def runs(p: Parts) -> list[tuple[int, str]]:
    return [(r.row["schedule_id"], r.row["phase"]) for r in p.of(RowWrite) if r.table == "schedule_runs"]


def local(ts: float) -> str:
    return datetime.fromtimestamp(ts, BERLIN).strftime("%a %H:%M")


def test_create_update_delete_store_their_rows() -> None:
    p = parts()
    created = p.schedules.create({**BODY, "deviceId": "AP-01", "device": "AP-01"}, p.now)
    assert created.id == 1 and p.schedules.create({**BODY, "fanSpeed": 2}, p.now).id == 2
    first = p.of(RowWrite)[0]
    assert (first.table, first.row) == ("schedules", {
        "id": 1, "device_id": "AP-01", "days": [0], "start": "08:00", "end": "09:00", "fan_speed": 4,
        "enabled": True, "updated_at": p.now, "created_at": p.now})
    created_at = p.now
    p.clock.advance(10)
    updated = p.schedules.update(1, {"fanSpeed": 5, "days": ["Mon", "Tue"]}, p.now)
    assert (updated.fan_speed, updated.days) == (5, frozenset({0, 1}))
    row = p.of(RowWrite)[-1].row
    assert (row["created_at"], row["updated_at"], row["days"]) == (created_at, p.now, [0, 1])
    with pytest.raises(ScheduleError):
        p.schedules.update(1, {"id": 7}, p.now)
    with pytest.raises(NotFoundError):
        p.schedules.create({**BODY, "device": "AP-09"}, p.now)
    p.schedules.delete(2, p.now)
    assert p.of(RowWrite)[-1] == RowWrite("schedules", {"id": 2}, delete=True)
    assert [s.id for s in p.schedules.for_device("AP-01")] == [1]
    with pytest.raises(NotFoundError):
        p.schedules.get(2)
    assert p.schedules.create(BODY, p.now).id == 3  # an id is never given twice


def test_restored_ids_continue_after_the_highest_ever_given() -> None:
    p = parts()
    p.schedules.restore([StoredSchedule(4, "AP-01", (0,), "08:00", "09:00", 2, True, 1.0)], high_water=9,
                        open_starts=set())
    assert p.schedules.get(4).fan_speed == 2
    assert p.schedules.create(BODY, p.now).id == 10


def test_the_timer_boundary_starts_and_ends_a_run_once() -> None:
    p = parts()
    p.schedules.create(BODY, p.now)
    assert p.schedules.next_transition is not None and local(p.schedules.next_transition) == "Mon 08:00"
    p.schedules.tick(p.now)  # not yet
    assert runs(p) == [] and p.layers.desired.get_layer("AP-01", Layer.SCHEDULE) is None
    p.clock.advance(60)
    p.schedules.tick(p.now)
    p.schedules.tick(p.now)  # a doubled wake-up changes nothing
    assert runs(p) == [(1, "start")]
    entry = p.layers.desired.get_layer("AP-01", Layer.SCHEDULE)
    assert entry is not None and entry.value == FanState(True, 4) and local(entry.expires_at or 0) == "Mon 09:00"
    assert local(p.schedules.next_transition) == "Mon 09:00"
    p.clock.advance(3600)
    p.schedules.tick(p.now)
    assert runs(p) == [(1, "start"), (1, "end")]
    assert p.layers.desired.get_layer("AP-01", Layer.SCHEDULE) is None
    assert p.layer_changes == [("AP-01", None), ("AP-01", "schedule")]
    assert p.metrics.value("gateway_schedule_fires_total") == 2
    assert [e.data["phase"] for e in p.of(DeviceEvent) if e.type == "schedule.run"] == ["start", "end"]


def test_a_run_started_before_a_restart_is_not_started_again() -> None:
    p = parts()
    p.clock.advance(31 * 60)  # 08:30
    window_start = datetime(2026, 11, 23, 8, 0, tzinfo=BERLIN).timestamp()
    p.schedules.restore([StoredSchedule(1, "AP-01", (0,), "08:00", "09:00", 4, True, 1.0)], high_water=1,
                        open_starts={(1, window_start)})
    p.schedules.evaluate_all(p.now)
    assert runs(p) == [] and p.layers.desired.get_layer("AP-01", Layer.SCHEDULE) is not None
    p.clock.advance(30 * 60)
    p.schedules.tick(p.now)
    assert runs(p) == [(1, "end")]


def test_runs_that_ended_while_down_get_their_end() -> None:
    p = parts()
    p.schedules.end_missed_runs([StoredRun(1, "AP-01", 100.0, 200.0, 3)], p.now)
    (row,) = p.of(RowWrite)
    assert row.row == {"schedule_id": 1, "device_id": "AP-01", "phase": "end", "window_start": 100.0,
                       "window_end": 200.0, "fan_speed": 3, "at": p.now}
    (event,) = p.of(DeviceEvent)
    assert event.data["endedWhileDown"] is True and event.data["phase"] == "end"


def test_a_device_leaving_the_config_ends_its_run_at_the_next_tick() -> None:
    p = parts(devices=("AP-01", "AP-02"))
    p.schedules.create(BODY, p.now)
    p.clock.advance(60)
    p.schedules.tick(p.now)
    assert not p.schedules.devices_changed(frozenset({"AP-02"}))  # no schedule of its own
    p.devices.discard("AP-01")
    assert p.schedules.devices_changed(frozenset({"AP-01"}))
    p.schedules.tick(p.now)
    assert runs(p) == [(1, "start"), (1, "end")]
    assert p.schedules.next_transition is None  # a device that is gone runs nothing


def test_boundaries_name_each_enabled_schedules_next_start_and_end() -> None:
    p = parts()
    p.schedules.create(BODY, p.now)
    p.schedules.create({**BODY, "enabled": False}, p.now)
    found = p.schedules.boundaries(p.now)
    assert {k: local(v.timestamp()) for k, v in found.items()} == {
        "schedule:1:start": "Mon 08:00", "schedule:1:end": "Mon 09:00"}
    assert all(v.tzinfo is UTC for v in found.values())
