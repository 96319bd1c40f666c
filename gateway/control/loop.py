"""The control task: performs queued effects in order, and owns the one timer of control.

Every part of control mutates its state synchronously on the event loop and queues the I/O that follows
(send a command, write an audit row, store an event) here; one task performs the queue in order. So
an ack on the broker's client path, an API request and a timer never interleave half-way through a
change, and the broker never waits on the database.

**One owner of time.** This task's sleep is the only timer in control. It wakes at the earliest deadline
the parts report (`deadline(now)`: command timeouts, layer expiry such as a pre-clean's end, the next
schedule boundary from ``schedules.next_transition``, the end of a reconciler back-off), at a `wake()`,
or after `MAX_SLEEP_S`, and then calls `tick(now)`; every decision reads the injected clock, so a test
moves a ManualClock and calls `wake()` instead of sleeping. Re-evaluation is idempotent, so a doubled
or a missed wake-up (suspend, a stepped wall clock) changes nothing.

Why our own DST-exact ``next_transition`` and no APScheduler (measured: ``python -c`` reading VmRSS in
/proc/self/status before and after the import plus 100 schedules, i.e. 200 boundaries; x86-64, 3.11):

* APScheduler's AsyncIOScheduler running a cron job per boundary: +4.2 MB over the bare imports of
  control, +1.5 MB in a process that already holds the daemon's imports (aiohttp, amqtt, ...);
* APScheduler's CronTrigger only computing fire times for this timer: +2.5 MB, +0.8 MB in the daemon;
* our ``next_transition`` (the same windows the reconciler decides with): +0.1 MB.

Beyond memory (the daemon's budget is 60 MB with 100 devices): APScheduler reads the wall clock itself,
so a ManualClock cannot drive it; its 3.11 triggers skip a midnight fire after spring-forward and miss a
start shifted by the gap (tests/unit/test_control_schedules.py keeps those canaries, with APScheduler as
a test-only oracle), so a timer on our model was needed beside it anyway; and two owners of one boundary
is what this design removes. The model already gives the DST rules (spring-forward 02:30 runs once at
03:30, an autumn repeat means its first occurrence).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog

from gateway.control.command_model import RUNTIME_ONLY, Effect
from gateway.core.clock import Clock
from gateway.core.metrics import Metrics
from gateway.core.models import StoreRecord

log = structlog.get_logger(__name__)

# Capped: the sleep runs on the monotonic clock, the deadlines on the wall clock; when the wall clock is
# stepped (NTP at boot on a board without an RTC, resume from suspend) we notice within a minute.
MAX_SLEEP_S = 60.0

Item = Effect | StoreRecord
Perform = Callable[[Item], Awaitable[None]]


class Enqueue(Protocol):
    """How the parts of control queue effects (:meth:`ControlLoop.queue`)."""

    def __call__(self, *items: Item) -> None: ...


class ControlLoop:
    """The effect queue, its task (`run()`) and the timer."""

    def __init__(
        self,
        *,
        clock: Clock,
        metrics: Metrics,
        perform: Perform,
        tick: Callable[[float], None],
        deadline: Callable[[float], float | None],
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._perform = perform
        self._tick = tick
        self._deadline = deadline
        self._effects: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def queue(self, *items: Item) -> None:
        """Append effects; they are performed in this order, after what was queued before."""
        if items:
            self._effects.extend(items)
            self._idle.clear()
            self._wake.set()

    def wake(self) -> None:
        """Tick now (the clock moved, or a part has work that is due)."""
        self._wake.set()

    async def drained(self) -> None:
        """Wait until what was queued so far has been handed to the store (API answers after that)."""
        if self._effects:
            await self._idle.wait()

    def next_wakeup_delay(self) -> float:
        """Seconds until the next deadline, at most MAX_SLEEP_S."""
        now = self._clock.now()
        at = self._deadline(now)
        if at is None:
            return MAX_SLEEP_S
        return min(MAX_SLEEP_S, max(0.0, at - now))

    async def run(self) -> None:
        while True:
            await self._perform_queued()
            self._tick(self._clock.now())
            if self._effects:
                continue
            self._idle.set()
            delay = self.next_wakeup_delay()
            self._wake.clear()
            if self._effects:
                continue
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the TaskGroup's cancel
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def flush_records(self) -> None:
        """At shutdown (task cancelled, intake stopped): store what is still queued, send nothing."""
        while self._effects:
            item = self._effects.popleft()
            if isinstance(item, RUNTIME_ONLY):
                continue
            try:
                await self._perform(item)
            except Exception:
                log.exception("control.flush_failed", effect=type(item).__name__)

    async def _perform_queued(self) -> None:
        while self._effects:
            item = self._effects.popleft()
            try:
                await self._perform(item)
            except asyncio.CancelledError:
                self._effects.appendleft(item)  # shutdown: flush_records() still stores it
                raise
            except Exception:
                # One failed effect (a full disk is retried by the writer itself) must not stop control.
                self._metrics.inc("gateway_control_errors_total", 1, "control effects that failed")
                log.exception("control.effect_failed", effect=type(item).__name__)
