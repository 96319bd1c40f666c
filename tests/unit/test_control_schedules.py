"""Weekly schedules: validation, windows, overlaps, midnight, DST, boundaries; APScheduler 3.11 as an oracle.

The gateway runs no APScheduler (see gateway/control/loop.py for why). Its cron triggers serve here as an
independent implementation of wall-clock times across DST: the model's boundaries must be fires of the
equivalent cron jobs, and the canaries document the faults that keep us from using it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.cron import CronTrigger

from gateway.control.desired import FanState
from gateway.control.schedules import (
    Boundary,
    Schedule,
    ScheduleError,
    active_windows,
    boundary_id,
    next_boundaries,
    next_transition,
    parse_schedule,
    schedule_decision,
    window_on,
)

BERLIN = ZoneInfo("Europe/Berlin")
DEV = "AP-01"
SPRING = datetime(2026, 3, 29).date()  # Sunday, 02:00 CET -> 03:00 CEST
AUTUMN = datetime(2026, 10, 25).date()  # Sunday, 03:00 CEST -> 02:00 CET
ALL_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def sched(sid: int, start: str, end: str, speed: int = 3, days: list[str] | None = None, *,
          device: str = DEV, enabled: bool = True) -> Schedule:
    body = {"device": device, "days": days or ALL_DAYS, "start": start, "end": end, "fanSpeed": speed,
            "enabled": enabled}
    return parse_schedule(body, schedule_id=sid)


def local(y: int, mo: int, d: int, h: int, mi: int = 0, fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=BERLIN, fold=fold)


def utc(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


# ----------------------------------------------------------------------------------------- validation


def test_parse_and_round_trip() -> None:
    s = sched(7, "08:00", "10:30", 4, ["wed", "Monday", "Sun"])
    assert s.days == frozenset({0, 2, 6})
    assert (s.start, s.end) == (time(8, 0), time(10, 30))
    assert s.to_json() == {"id": 7, "device": DEV, "days": ["Mon", "Wed", "Sun"], "start": "08:00",
                           "end": "10:30", "fanSpeed": 4, "enabled": True}
    assert parse_schedule(s.to_json(), schedule_id=7) == s


def test_enabled_defaults_to_true() -> None:
    body = {"device": DEV, "days": ["Mon"], "start": "08:00", "end": "09:00", "fanSpeed": 1}
    assert parse_schedule(body, schedule_id=1).enabled is True


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"device": ""}, "device", "non-empty"),
        ({"days": []}, "days", "at least one day"),
        ({"days": "Mon"}, "days", "list of day names"),
        ({"days": ["Mon", "Funday"]}, "days[1]", "expected one of Mon, Tue"),
        ({"days": ["Mon", "monday"]}, "days[1]", "listed twice"),
        ({"days": [0]}, "days[0]", "expected one of"),
        ({"start": "8:00"}, "start", "HH:MM"),
        ({"start": "24:00"}, "start", "HH:MM"),
        ({"end": "10:60"}, "end", "HH:MM"),
        ({"end": 1000}, "end", "HH:MM"),
        ({"end": "08:00"}, "end", "must differ from start"),
        ({"fanSpeed": 0}, "fanSpeed", r"out of range 1\.\.5"),
        ({"fanSpeed": 6}, "fanSpeed", "out of range"),
        ({"fanSpeed": True}, "fanSpeed", "whole number"),
        ({"fanSpeed": 2.0}, "fanSpeed", "whole number"),
        ({"enabled": "yes"}, "enabled", "true/false"),
    ],
)
def test_validation_names_the_field(change: dict[str, Any], field: str, message: str) -> None:
    body: dict[str, Any] = {"device": DEV, "days": ["Mon"], "start": "08:00", "end": "10:00", "fanSpeed": 2}
    body.update(change)
    with pytest.raises(ScheduleError, match=message) as info:
        parse_schedule(body, schedule_id=1)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


@pytest.mark.parametrize("missing", ["device", "days", "start", "end", "fanSpeed"])
def test_missing_field(missing: str) -> None:
    body: dict[str, Any] = {"device": DEV, "days": ["Mon"], "start": "08:00", "end": "10:00", "fanSpeed": 2}
    del body[missing]
    with pytest.raises(ScheduleError, match="is required") as info:
        parse_schedule(body, schedule_id=1)
    assert info.value.field == missing


def test_body_must_be_an_object() -> None:
    with pytest.raises(ScheduleError, match="JSON object"):
        parse_schedule([1, 2], schedule_id=1)  # type: ignore[arg-type]


def test_constructor_validates_too() -> None:
    with pytest.raises(ScheduleError, match=r"0 \(Mon\) \.\. 6"):
        Schedule(1, DEV, frozenset({7}), time(8), time(9), 2)
    with pytest.raises(ScheduleError, match="whole minute"):
        Schedule(1, DEV, frozenset({1}), time(8, 0, 30), time(9), 2)


# -------------------------------------------------------------------------------------------- windows


def test_window_is_half_open_and_on_its_days_only() -> None:
    s = [sched(1, "08:00", "10:00", 2, ["Mon"])]
    monday = local(2026, 6, 1, 8)  # a Monday
    assert [w.schedule.id for w in active_windows(s, DEV, monday, tz=BERLIN)] == [1]
    assert active_windows(s, DEV, monday - timedelta(seconds=1), tz=BERLIN) == []
    assert active_windows(s, DEV, local(2026, 6, 1, 9, 59), tz=BERLIN) != []
    assert active_windows(s, DEV, local(2026, 6, 1, 10), tz=BERLIN) == []
    assert active_windows(s, DEV, local(2026, 6, 2, 9), tz=BERLIN) == []  # Tuesday
    assert active_windows(s, "other", monday, tz=BERLIN) == []


def test_at_may_be_given_in_any_zone_but_must_be_aware() -> None:
    s = [sched(1, "08:00", "10:00", 2, ["Mon"])]
    assert active_windows(s, DEV, utc(2026, 6, 1, 6, 30), tz=BERLIN) != []  # 08:30 CEST
    with pytest.raises(ValueError, match="timezone-aware"):
        active_windows(s, DEV, datetime(2026, 6, 1, 8, 30), tz=BERLIN)


def test_window_crossing_midnight_belongs_to_its_start_day() -> None:
    s = [sched(1, "22:00", "06:00", 2, ["Sun"])]
    assert active_windows(s, DEV, local(2026, 6, 7, 21, 59), tz=BERLIN) == []  # Sunday
    assert active_windows(s, DEV, local(2026, 6, 7, 22), tz=BERLIN) != []
    assert active_windows(s, DEV, local(2026, 6, 8, 5, 59), tz=BERLIN) != []  # Monday morning
    assert active_windows(s, DEV, local(2026, 6, 8, 6), tz=BERLIN) == []
    assert active_windows(s, DEV, local(2026, 6, 8, 22, 30), tz=BERLIN) == []  # Monday night: not a Sunday
    w = window_on(s[0], datetime(2026, 6, 7).date(), BERLIN)
    assert w is not None and w.end - w.start == timedelta(hours=8)


def test_window_ending_at_midnight() -> None:
    s = [sched(1, "22:00", "00:00", 2, ["Fri"])]
    assert active_windows(s, DEV, local(2026, 6, 5, 23, 59), tz=BERLIN) != []
    assert active_windows(s, DEV, local(2026, 6, 6, 0, 0), tz=BERLIN) == []


def test_disabled_schedules_are_ignored() -> None:
    s = [sched(1, "08:00", "10:00", 5, enabled=False), sched(2, "08:00", "10:00", 1)]
    assert [w.schedule.id for w in active_windows(s, DEV, local(2026, 6, 1, 9), tz=BERLIN)] == [2]
    assert cron_jobs(s[0]) == []
    assert next_boundaries(s[0], local(2026, 6, 1, 9), tz=BERLIN) == {}


def test_overlap_rule_highest_speed_then_earliest_start_then_lowest_id() -> None:
    s = [
        sched(5, "07:00", "12:00", 2),
        sched(4, "08:00", "11:00", 4),
        sched(3, "09:00", "10:00", 4),
        sched(2, "08:00", "11:00", 4),
        sched(1, "09:00", "10:00", 1),
    ]
    at = local(2026, 6, 1, 9, 30)
    assert [w.schedule.id for w in active_windows(s, DEV, at, tz=BERLIN)] == [2, 4, 3, 5, 1]
    # listing order does not matter
    assert [w.schedule.id for w in active_windows(list(reversed(s)), DEV, at, tz=BERLIN)] == [2, 4, 3, 5, 1]
    decision = schedule_decision(s, DEV, at, tz=BERLIN)
    assert decision.value == FanState(power=True, fan_speed=4)
    assert decision.window is not None and decision.window.schedule.id == 2
    assert decision.expires_at == local(2026, 6, 1, 11).timestamp()


def test_tie_at_equal_speed_keeps_the_window_already_running() -> None:
    s = [sched(1, "09:00", "10:00", 3), sched(2, "08:00", "12:00", 3)]
    at = local(2026, 6, 1, 9, 30)
    assert [w.schedule.id for w in active_windows(s, DEV, at, tz=BERLIN)] == [2, 1]


def test_startup_inside_a_window_applies_it_at_once() -> None:
    s = [sched(1, "08:00", "18:00", 3)]
    decision = schedule_decision(s, DEV, local(2026, 6, 1, 13, 17), tz=BERLIN)
    assert decision.value == FanState(True, 3)
    assert decision.expires_at == local(2026, 6, 1, 18).timestamp()
    assert schedule_decision(s, DEV, local(2026, 6, 1, 19), tz=BERLIN).value is None


def test_next_transition() -> None:
    s = [sched(1, "08:00", "10:00", 2, ["Mon"]), sched(2, "10:00", "12:00", 3, ["Mon"])]
    t = next_transition(s, DEV, local(2026, 6, 1, 7), tz=BERLIN)
    assert t is not None and t.at == local(2026, 6, 1, 8).astimezone(UTC) and t.changes == ((1, "start"),)
    t = next_transition(s, DEV, local(2026, 6, 1, 8), tz=BERLIN)  # strictly after
    assert t is not None and t.at == local(2026, 6, 1, 10) and t.changes == ((1, "end"), (2, "start"))
    t = next_transition(s, DEV, local(2026, 6, 1, 12), tz=BERLIN)  # a week later
    assert t is not None and t.at == local(2026, 6, 8, 8)
    assert next_transition(s, "other", local(2026, 6, 1, 7), tz=BERLIN) is None
    assert next_transition([], DEV, local(2026, 6, 1, 7), tz=BERLIN) is None


# ------------------------------------------------------------------------------------------------ DST


def _starts_between(schedules: list[Schedule], begin: datetime, end: datetime) -> list[datetime]:
    starts: list[datetime] = []
    at = begin
    while (t := next_transition(schedules, DEV, at, tz=BERLIN)) is not None and t.at < end:
        starts += [t.at for _, kind in t.changes if kind == "start"]
        at = t.at
    return starts


def test_spring_forward_start_in_the_gap_runs_once_at_0330() -> None:
    s = [sched(1, "02:30", "05:00", 3)]
    starts = _starts_between(s, local(2026, 3, 29, 0), local(2026, 3, 30, 0))
    assert starts == [utc(2026, 3, 29, 1, 30)]  # 03:30 CEST
    assert starts[0].astimezone(BERLIN).strftime("%H:%M %Z") == "03:30 CEST"
    assert active_windows(s, DEV, local(2026, 3, 29, 3, 29), tz=BERLIN) == []
    assert active_windows(s, DEV, local(2026, 3, 29, 3, 30), tz=BERLIN) != []
    w = window_on(s[0], SPRING, BERLIN)
    assert w is not None and w.end == local(2026, 3, 29, 5)  # end is unaffected


def test_spring_forward_window_entirely_shifted_past_its_end_does_not_run() -> None:
    s = [sched(1, "02:30", "03:10", 3)]
    assert window_on(s[0], SPRING, BERLIN) is None
    assert _starts_between(s, local(2026, 3, 29, 0), local(2026, 3, 30, 0)) == []
    assert window_on(s[0], SPRING + timedelta(days=1), BERLIN) is not None


def test_spring_forward_window_inside_the_gap_is_skipped_and_next_week_found() -> None:
    s = [sched(1, "02:00", "03:00", 3, ["Sun"])]
    assert window_on(s[0], SPRING, BERLIN) is None
    t = next_transition(s, DEV, local(2026, 3, 22, 3), tz=BERLIN)  # the week before: next run is 2 weeks on
    assert t is not None and t.at == local(2026, 4, 5, 2) and t.changes == ((1, "start"),)


def test_autumn_fall_back_start_in_the_repeated_hour_runs_once() -> None:
    s = [sched(1, "02:30", "04:00", 3)]
    starts = _starts_between(s, local(2026, 10, 25, 0), local(2026, 10, 26, 0))
    assert starts == [utc(2026, 10, 25, 0, 30)]  # first 02:30 (CEST)
    first = active_windows(s, DEV, utc(2026, 10, 25, 0, 30), tz=BERLIN)
    second = active_windows(s, DEV, utc(2026, 10, 25, 1, 30), tz=BERLIN)  # the second 02:30 (CET)
    assert first[0].key == second[0].key  # same run, not a new one
    assert first[0].end == utc(2026, 10, 25, 3, 0)  # 04:00 CET: the window lasts 2.5 h that night


def test_autumn_short_window_in_repeated_hour_is_over_at_second_occurrence() -> None:
    s = [sched(1, "02:30", "02:45", 3)]
    assert active_windows(s, DEV, utc(2026, 10, 25, 0, 40), tz=BERLIN) != []
    assert active_windows(s, DEV, utc(2026, 10, 25, 1, 40), tz=BERLIN) == []


def test_windows_crossing_dst_nights_keep_wall_clock_ends() -> None:
    s = [sched(1, "22:00", "06:00", 3, ["Sat"])]
    spring = window_on(s[0], SPRING - timedelta(days=1), BERLIN)
    autumn = window_on(s[0], AUTUMN - timedelta(days=1), BERLIN)
    assert spring is not None and spring.end - spring.start == timedelta(hours=7)
    assert autumn is not None and autumn.end - autumn.start == timedelta(hours=9)


# --------------------------------------------------------------------------------------- boundaries


def test_next_boundaries_of_a_schedule() -> None:
    s = sched(4, "22:00", "06:00", 2, ["Sat"])
    assert next_boundaries(s, local(2026, 6, 3, 12), tz=BERLIN) == {  # a Wednesday
        "start": local(2026, 6, 6, 22).astimezone(UTC), "end": local(2026, 6, 7, 6).astimezone(UTC)}
    # inside the window: its end comes first, the next start a week later; strictly after `after`
    assert next_boundaries(s, local(2026, 6, 6, 22), tz=BERLIN) == {
        "start": local(2026, 6, 13, 22).astimezone(UTC), "end": local(2026, 6, 7, 6).astimezone(UTC)}
    assert boundary_id(4, "end") == "schedule:4:end"


def test_next_boundaries_move_with_dst() -> None:
    s = sched(1, "02:30", "05:00", 3, ["Sun"])
    spring = next_boundaries(s, local(2026, 3, 29, 0), tz=BERLIN)
    assert spring["start"] == local(2026, 3, 29, 3, 30).astimezone(UTC)  # the gap moves 02:30 to 03:30
    autumn = next_boundaries(s, local(2026, 10, 25, 0), tz=BERLIN)
    assert autumn["start"] == local(2026, 10, 25, 2, 30, fold=0).astimezone(UTC)  # the first 02:30


def test_next_boundaries_agree_with_next_transition() -> None:
    s = [sched(1, "08:00", "09:00", 2, ["Mon", "Thu"]), sched(2, "23:00", "01:00", 4, ["Sun"])]
    at = local(2026, 6, 1, 8, 30)
    t = next_transition(s, DEV, at.astimezone(UTC), tz=BERLIN)
    assert t is not None
    soonest = min(instant for sc in s for instant in next_boundaries(sc, at, tz=BERLIN).values())
    assert soonest == t.at


# ---------------------------------------------------------------------------- APScheduler 3.11 (oracle)

_CRON_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class CronJob:
    """Arguments for ``CronTrigger(**trigger_kwargs(), timezone=tz)``: one boundary of a schedule as cron."""

    job_id: str
    schedule_id: int
    kind: Boundary
    day_of_week: str
    hour: int
    minute: int

    def trigger_kwargs(self) -> dict[str, str | int]:
        return {"day_of_week": self.day_of_week, "hour": self.hour, "minute": self.minute}


def cron_jobs(schedule: Schedule) -> list[CronJob]:
    """The start and end jobs of an enabled schedule (none when disabled); an end after midnight runs on
    the following weekdays."""
    if not schedule.enabled:
        return []
    start_days = sorted(schedule.days)
    end_days = sorted({(d + 1) % 7 for d in schedule.days}) if schedule.crosses_midnight else start_days
    return [
        CronJob(boundary_id(schedule.id, "start"), schedule.id, "start", _cron_days(start_days),
                schedule.start.hour, schedule.start.minute),
        CronJob(boundary_id(schedule.id, "end"), schedule.id, "end", _cron_days(end_days),
                schedule.end.hour, schedule.end.minute),
    ]


def _cron_days(days: Sequence[int]) -> str:
    return ",".join(_CRON_DAYS[d] for d in days)


def test_cron_job_arguments_and_ids() -> None:
    jobs = cron_jobs(sched(12, "07:05", "09:40", 2, ["Mon", "Wed"]))
    assert [(j.job_id, j.kind, j.trigger_kwargs()) for j in jobs] == [
        ("schedule:12:start", "start", {"day_of_week": "mon,wed", "hour": 7, "minute": 5}),
        ("schedule:12:end", "end", {"day_of_week": "mon,wed", "hour": 9, "minute": 40}),
    ]


def test_cron_end_days_shift_when_crossing_midnight() -> None:
    jobs = cron_jobs(sched(3, "22:00", "06:00", 2, ["Sat", "Sun"]))
    assert jobs[0].day_of_week == "sat,sun"
    assert jobs[1].day_of_week == "mon,sun"  # Sunday's window ends on Monday, Saturday's on Sunday


def _cron_fires(kwargs: dict[str, Any], begin: datetime, end: datetime) -> list[datetime]:
    """Fire times as the scheduler sees them (its `now` is a real instant, so step in UTC: wall-clock
    arithmetic on an aware datetime resets `fold` and would step back an hour on the fall-back night)."""
    trigger = CronTrigger(**kwargs, timezone=BERLIN)
    fires: list[datetime] = []
    prev = None
    now = begin.astimezone(BERLIN)
    while (fire := trigger.get_next_fire_time(prev, now)) is not None and fire < end:
        fires.append(fire.astimezone(UTC))
        prev, now = fire, (fire.astimezone(UTC) + timedelta(microseconds=1)).astimezone(BERLIN)
        assert len(fires) < 1000
    return fires


def _model_edges(s: Schedule, kind: str, begin: datetime, end: datetime) -> list[datetime]:
    edges: list[datetime] = []
    at = begin - timedelta(microseconds=1)
    while (t := next_transition([s], DEV, at, tz=BERLIN)) is not None and t.at < end:
        edges += [t.at for _, k in t.changes if k == kind]
        at = t.at
    return edges


CASES = [
    ("02:30", "05:00", ALL_DAYS),
    ("01:00", "02:30", ALL_DAYS),
    ("22:00", "02:15", ["Sat", "Sun"]),
    ("02:00", "03:00", ["Sun"]),
    ("08:15", "17:45", ["Mon", "Fri", "Sun"]),
    ("23:30", "23:59", ALL_DAYS),
    ("21:00", "01:30", ["Sat"]),
]


@pytest.mark.parametrize(("start", "end", "days"), CASES)
@pytest.mark.parametrize("dst_day", [SPRING, AUTUMN], ids=["spring", "autumn"])
def test_cron_trigger_agrees_with_model_around_dst(start: str, end: str, days: list[str], dst_day: Any) -> None:
    s = sched(1, start, end, 3, days)
    begin = datetime.combine(dst_day - timedelta(days=8), time(0), tzinfo=BERLIN).astimezone(UTC)
    stop = datetime.combine(dst_day + timedelta(days=8), time(0), tzinfo=BERLIN).astimezone(UTC)
    for job in cron_jobs(s):
        cron = _cron_fires(job.trigger_kwargs(), begin, stop)
        model = _model_edges(s, job.kind, begin, stop)
        assert set(model) <= set(cron), f"{job.job_id}: model edges cron never fires"
        extra = sorted(set(cron) - set(model))
        if dst_day == SPRING:
            # only a window the gap erased (its shifted start is not before its end) has a cron fire too
            assert all(window_on(s, dst_day, BERLIN) is None and e.astimezone(BERLIN).date() == dst_day
                       for e in extra), f"{job.job_id}: cron fires the model does not know: {extra}"
        else:
            # APScheduler 3.11 fires a wall time in the repeated hour twice; only there may they differ
            assert all(e.astimezone(BERLIN).fold == 1 for e in extra), extra
            assert len(extra) <= 1


@pytest.mark.parametrize(("start", "end", "days"), CASES)
@pytest.mark.parametrize("dst_day", [SPRING, AUTUMN], ids=["spring", "autumn"])
def test_job_handler_pattern_runs_each_window_once(start: str, end: str, days: list[str], dst_day: Any) -> None:
    """A start job that re-evaluates and dedupes by window key runs once per window, doubled fires or not."""
    s = sched(1, start, end, 3, days)
    begin = datetime.combine(dst_day - timedelta(days=1), time(12), tzinfo=BERLIN).astimezone(UTC)
    stop = datetime.combine(dst_day + timedelta(days=1), time(12), tzinfo=BERLIN).astimezone(UTC)
    start_job = cron_jobs(s)[0]
    runs: list[tuple[int, float]] = []
    for fire in _cron_fires(start_job.trigger_kwargs(), begin, stop):
        decision = schedule_decision([s], DEV, fire, tz=BERLIN)
        if decision.window is not None and decision.window.key not in runs:
            runs.append(decision.window.key)
    around = (dst_day - timedelta(days=1), dst_day, dst_day + timedelta(days=1))
    expected = [w.key for w in (window_on(s, d, BERLIN) for d in around) if w is not None and begin <= w.start < stop]
    assert runs == expected


def test_canary_apscheduler_3_11_skips_a_midnight_job_after_spring_forward() -> None:
    """APScheduler 3.11.3: a daily 00:00 job that fires on the spring-forward day computes its next fire as
    the day after next (skipping Monday 00:00). The model does not. If this test fails, APScheduler was
    fixed: update NOTES-deps.md and the reasons in gateway/control/loop.py."""
    s = sched(1, "22:00", "00:00", 3)  # its end job is a daily 00:00 cron
    end_job = cron_jobs(s)[1]
    trigger = CronTrigger(**end_job.trigger_kwargs(), timezone=BERLIN)
    fired = local(2026, 3, 29, 0)
    after = (fired.astimezone(UTC) + timedelta(milliseconds=5)).astimezone(BERLIN)
    assert trigger.get_next_fire_time(fired, after) == local(2026, 3, 31, 0)  # the bug: 30 March skipped
    t = next_transition([s], DEV, after, tz=BERLIN)
    assert t is not None and t.at == local(2026, 3, 29, 22)  # the model: next start ...
    t = next_transition([s], DEV, t.at, tz=BERLIN)
    assert t is not None and t.at == local(2026, 3, 30, 0) and t.changes == ((1, "end"),)  # ... and its end


def test_canary_apscheduler_3_11_added_inside_the_skipped_hour_misses_the_shifted_start() -> None:
    """A 02:30 job (re)built at 03:10 CEST on the spring-forward day fires next the day after, while the model
    still starts that day's window at 03:30: a timer on cron fires would miss that day's run."""
    s = sched(1, "02:30", "05:00", 3)
    trigger = CronTrigger(**cron_jobs(s)[0].trigger_kwargs(), timezone=BERLIN)
    assert trigger.get_next_fire_time(None, local(2026, 3, 29, 3, 10)) == local(2026, 3, 30, 2, 30)
    t = next_transition([s], DEV, local(2026, 3, 29, 3, 10), tz=BERLIN)
    assert t is not None and t.at == local(2026, 3, 29, 3, 30) and t.changes == ((1, "start"),)
