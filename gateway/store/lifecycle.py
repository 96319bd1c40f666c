"""The data lifecycle job: the rollups' catch-up, raw readings compacted by device-hour, each table's retention
window, the database's size cap, free space handed back.

It runs as a supervised task (app.py: restarted with back-off if it fails, its health in /health) and not on
control's timer: it is the store's business, a failure here must not stall control, and its passes need no
exact boundaries (a pass an hour late deletes an hour more). Every cut-off comes from the injected clock, read
once per pass; the pause between passes and steps is loop time (an interval, not domain time).

A pass is many small steps (LifecycleStep records, store/lifecycle_steps.py): each a transaction that the
store writer runs after a batch, through its one connection (DESIGN principle 5), then a pause of `pause_ms`
in which the writer commits whatever ingest queued. A step is sized to take about `step_target_ms` (at most
`batch_rows` rows), from the time the previous step of its kind took (remembered from pass to pass): the longest
that a reading waits for the lifecycle is about one step, on a Pi's card as on a fast disk. How long each kind
of step held the writer's connection is kept as a histogram (`holds`, store/step_holds.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gateway.core.clock import Clock
from gateway.core.metrics import Metrics
from gateway.core.models import GatewayEvent, LifecycleStep, StoreRecord
from gateway.settings_retention import RetentionSection
from gateway.store.step_holds import StepHolds

log = structlog.get_logger(__name__)

DAY_S = 86400.0
STEP_FIRST = 50  # rows (readings, pages) of the first step of a kind; the next ones follow the time it took
STEP_FEWEST = 20
DROP_FEWEST = 2000  # ids a step of compaction's deletes takes at least (lifecycle.DataLifecycle._drop_covered)
MB = 1024 * 1024
UNTIL_NONE_LEFT = ("size_cap",)
Put = Callable[[StoreRecord], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class PassReport:
    """What one pass removed: rows per table (by age), readings over the size cap, pages handed back."""

    expired: dict[str, int] = field(default_factory=dict)
    compacted: int = 0
    over_cap: int = 0
    reclaimed_pages: int = 0


class DataLifecycle:
    def __init__(
        self, policy: RetentionSection, *, put: Put, clock: Clock, metrics: Metrics, sleep: Sleep = asyncio.sleep
    ) -> None:
        self._policy = policy
        self._put = put
        self._clock = clock
        self._metrics = metrics
        self._sleep = sleep
        self.passes = 0  # retention passes completed (the first runs at start)
        self.holds = StepHolds(metrics)  # how long each kind of step held the writer's connection
        # The size of the next step of each kind (action, table), from the time the last one took: a pass starts
        # where the last one left off instead of with a step whose time nobody has measured.
        self._sizes: dict[tuple[str, str], int] = {}

    async def run(self) -> None:
        """The supervised task: rollups caught up every `rollup_interval_seconds`; a retention pass at start and
        then every `interval_minutes` (by the injected clock)."""
        next_pass = self._clock.now()
        while True:
            now = self._clock.now()
            if now >= next_pass:
                await self.run_pass()
                next_pass = now + self._policy.interval_minutes * 60.0
            else:
                await self.catch_up()
            await self._sleep(self._policy.rollup_interval_seconds)

    async def catch_up(self) -> int:
        """Fold every reading stored so far into the rollups; how many. Up to the newest reading when it
        starts: under ingest faster than its steps it would never end otherwise."""
        newest = await self._repeat("newest", "", limit=1)
        return await self._repeat("rollup", "", cutoff=float(newest), limit=self._policy.rollup_batch_readings)

    async def compact(self, cutoff: float) -> int:
        """Move the raw readings of every device-hour that ended by `cutoff` (and that the rollups hold) into
        one compact row per device-hour, an hour of all devices at a time (store/compaction.py); how many
        readings moved."""
        moved = 0
        await self._drop_covered()  # what an interrupted pass left
        while True:
            _, _, plan = await self._step(LifecycleStep("compact_plan", "readings", cutoff, 0, self._future()))
            if not plan:
                break
            through, *device_hours = plan
            key = ("compact", "readings")
            limit = self._first_limit(key, self._policy.batch_rows)
            while device_hours:
                count, took, found = await self._step(LifecycleStep("compact", "readings", 0.0, limit, self._future(),
                                                                    through, found=list(device_hours)))
                moved += count
                device_hours = device_hours[found[0]:]
                limit = self._next_limit(key, limit, count, took, self._policy.batch_rows)
                await self._sleep(self._policy.pause_ms / 1000.0)
            await self._drop_covered()
        if moved:
            self._metrics.inc("gateway_readings_compacted_total", moved,
                              "raw readings moved into their device-hour's compact row")
        return moved

    async def run_pass(self) -> PassReport:
        """Rollups first (retention and compaction keep what they do not hold yet), then compaction, retention,
        size cap, reclaim."""
        p = self._policy
        await self.catch_up()
        now = self._clock.now()
        report = PassReport()
        if p.compact_after_hours:
            report.compacted = await self.compact(now - p.compact_after_hours * 3600.0)
        for table, days in p.windows().items():
            removed = await self._repeat("expire", table, cutoff=now - days * DAY_S)
            if removed:
                report.expired[table] = removed
                self._metrics.inc("gateway_retention_deleted_total", removed, "rows past their retention window",
                                  table=table)
        if p.max_db_mb:
            report.over_cap = await self._repeat("size_cap", "readings", size=p.max_db_mb * MB)
            if report.over_cap:
                self._metrics.inc("gateway_retention_size_cap_deleted_total", report.over_cap,
                                  "oldest readings deleted to keep the database under its size cap")
                await self._put(GatewayEvent(self._clock.now(), "storage.size_cap", {
                    "deleted": report.over_cap, "table": "readings", "capMb": p.max_db_mb}))
                log.warning("retention.size_cap", deleted=report.over_cap, cap_mb=p.max_db_mb)
        report.reclaimed_pages = await self._repeat("reclaim", "", size=int(p.keep_free_mb * MB),
                                                    limit=p.reclaim_step_pages)
        if report.reclaimed_pages:
            self._metrics.inc("gateway_store_reclaimed_pages_total", report.reclaimed_pages,
                              "free database pages handed back to the file system")
        if report.expired or report.reclaimed_pages or report.compacted:
            log.info("retention.pass", expired=report.expired, compacted=report.compacted,
                     reclaimed_pages=report.reclaimed_pages)
        self.passes += 1
        return report

    async def _drop_covered(self) -> None:
        """Delete the covered rows of the wave in id order, in steps of about `step_target_ms` but never fewer
        than DROP_FEWEST ids: every step rewrites the page of the (device_id, ts) index of each device whose
        rows it deletes (at 100 devices ~400 KB a step), so steps of 20 ids wrote ~5 KB a reading."""
        key = ("drop_covered", "readings")
        after, limit = 0, max(DROP_FEWEST, self._first_limit(key, self._policy.batch_rows))
        while after >= 0:
            deleted, took, found = await self._step(LifecycleStep("drop_covered", "readings", after, limit,
                                                                  self._future()))
            after = found[0]
            limit = max(DROP_FEWEST, self._next_limit(key, limit, deleted, took, self._policy.batch_rows))
            if after >= 0:
                await self._sleep(self._policy.pause_ms / 1000.0)

    def _future(self) -> asyncio.Future[tuple[int, float]]:
        return asyncio.get_running_loop().create_future()

    async def _step(self, step: LifecycleStep) -> tuple[int, float, list[Any]]:
        """Run one step: its count, the seconds it held the writer's connection (recorded), what it found."""
        await self._put(step)
        count, took = await step.done
        self.holds.record(step.action, took)
        return count, took, step.found

    def _first_limit(self, key: tuple[str, str], most: int) -> int:
        return min(most, self._sizes.get(key, STEP_FIRST))

    def _next_limit(self, key: tuple[str, str], limit: int, handled: int, took: float, most: int) -> int:
        """The next step's size, towards `step_target_ms` from the time this one took (remembered for the next step
        of its kind). A step that handled fewer rows than its limit (the end of the work, a table of few rows) took
        less than a full one would: it may make the next step smaller, never bigger."""
        if took > 0:
            sized = int(min(most, max(STEP_FEWEST, limit * self._policy.step_target_ms / 1000.0 / took)))
            limit = sized if handled >= limit else min(limit, sized)
        self._sizes[key] = limit
        return limit

    async def _repeat(self, action: str, table: str, *, cutoff: float = 0.0, size: int = 0,
                      limit: int | None = None) -> int:
        """Steps until there is nothing left to do; the total removed (folded). Each step's size follows the
        time the last one held the writer's connection, towards `step_target_ms` (a slow card: smaller steps)."""
        most = limit or self._policy.batch_rows
        key = (action, table)
        step_limit = self._first_limit(key, most)
        total = 0
        while True:
            removed, took, _ = await self._step(LifecycleStep(action, table, cutoff, step_limit, self._future(), size))
            total += removed
            # The size cap deletes by slices of time, which may hold fewer rows than a step takes; compaction and
            # the readings' retention take whole device-hours, which may hold fewer or more.
            if action == "newest" or removed == 0 or (removed < step_limit and action not in UNTIL_NONE_LEFT
                                                      and table != "readings"):
                return total
            step_limit = self._next_limit(key, step_limit, removed, took, most)
            await self._sleep(self._policy.pause_ms / 1000.0)
