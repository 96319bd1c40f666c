"""How long the data lifecycle's steps held the store writer's connection: the histogram per step kind, and a
real pass on a SQLite file recording every kind of step it ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.core.clock import ManualClock
from gateway.core.metrics import Metrics
from gateway.settings_retention import RetentionSection
from gateway.store.lifecycle import STEP_FIRST, DataLifecycle
from gateway.store.step_holds import Histogram, StepHolds
from tests.fixtures.lifecycle import T0, insert_readings, reading_rows, running_store

DAY = 86400.0


def test_a_quantile_is_its_buckets_upper_bound_and_the_maximum_is_exact() -> None:
    hist = Histogram()
    for _ in range(99):
        hist.add(0.001)
    hist.add(0.030)
    assert 0.001 <= hist.quantile(0.5) <= 0.00125
    assert 0.001 <= hist.quantile(0.99) <= 0.00125  # the 99th of 100 steps took 1 ms
    assert hist.quantile(1.0) == hist.longest == 0.030  # the last bucket's bound is the longest step itself
    assert hist.count == 100 and hist.total == pytest.approx(0.129)
    assert Histogram().quantile(0.99) == 0.0


def test_holds_are_counted_by_step_kind_in_the_metrics() -> None:
    metrics = Metrics()
    holds = StepHolds(metrics)
    holds.record("expire", 0.002)
    holds.record("expire", 0.004)
    holds.record("rollup", 0.010)
    assert metrics.value("gateway_lifecycle_steps_total", action="expire") == 2
    assert metrics.value("gateway_lifecycle_step_seconds_total", action="expire") == pytest.approx(0.006)
    assert metrics.value("gateway_lifecycle_step_max_seconds", action="expire") == 0.004
    assert metrics.value("gateway_lifecycle_step_max_seconds", action="rollup") == 0.010
    summary = holds.summary()
    assert summary["expire"]["steps"] == 2 and summary["expire"]["max_ms"] == pytest.approx(4.0)


async def test_a_pass_records_how_long_each_kind_of_its_steps_held_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    policy = RetentionSection(pause_ms=0, step_target_ms=1000, compact_after_hours=1)
    async with running_store(path, policy) as store:
        insert_readings(path, reading_rows(3, T0, T0 + 2 * DAY, 600))
        store.clock.advance(91 * DAY)  # the first day is past the 90-day window
        report = await store.lifecycle.run_pass()
        summary = store.lifecycle.holds.summary()
    assert report.expired["readings"] == 3 * 144 and report.compacted
    assert {"newest", "rollup", "compact_plan", "compact", "drop_covered", "expire", "size_cap", "reclaim"} <= set(
        summary)
    for action, figures in summary.items():
        assert figures["steps"] >= 1 and 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"], action
        assert store.metrics.value("gateway_lifecycle_steps_total", action=action) == figures["steps"]


async def test_a_pass_starts_each_kind_of_step_at_the_size_the_last_one_reached(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    policy = RetentionSection(pause_ms=0, step_target_ms=1000, rollup_batch_readings=400)
    limits: list[int] = []
    async with running_store(path, policy) as store:
        async def put(record: Any) -> None:
            if record.action == "rollup":
                limits.append(record.limit)
            await store.writer.put(record)

        lifecycle = DataLifecycle(policy, put=put, clock=store.clock, metrics=store.metrics)
        insert_readings(path, reading_rows(2, T0, T0 + 3600, 6))  # 1,200 readings
        assert await lifecycle.catch_up() == 1200
        first = list(limits)
        limits.clear()
        insert_readings(path, reading_rows(2, T0 + 3600, T0 + 7200, 6))
        assert await lifecycle.catch_up() == 1200
    # the first fold ever is small (nobody has measured one yet); a step of 1,000 ms allows the most
    assert first[0] == STEP_FIRST and first[1:] == [400] * (len(first) - 1)
    assert limits == [400, 400, 400, 400]  # the next catch-up starts where the last one left off


def test_a_step_that_handled_less_than_its_limit_never_makes_the_next_one_bigger() -> None:
    lifecycle = DataLifecycle(RetentionSection(step_target_ms=2), put=_no_put, clock=ManualClock(T0),
                              metrics=Metrics())
    key = ("expire", "events")
    assert lifecycle._next_limit(key, 100, 100, 0.001, 5000) == 200  # a full step of 1 ms: twice as many next
    assert lifecycle._next_limit(key, 100, 10, 0.001, 5000) == 100  # 10 rows of 100 in 1 ms: not more
    assert lifecycle._next_limit(key, 100, 10, 0.004, 5000) == 50  # but 4 ms for them: fewer
    assert lifecycle._next_limit(key, 100, 100, 0.0, 5000) == 100  # no time measured: the same


async def _no_put(record: Any) -> None:
    raise AssertionError(record)
