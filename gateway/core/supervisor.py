"""Supervised long-running tasks (DESIGN principle 4): the uplink, each device link, later each serial bus.

A supervised task that fails (raises, or returns while it should run for ever) is restarted after a
jittered, doubling back-off. The supervisor logs once when a task starts failing and once when it is
healthy again, never a traceback per retry, and keeps each task's health for /health. A task tells that it
is healthy through its `Health` handle (`up()`: connected, polling, scanning); one that does not say so
counts as healthy once it has run `stable_after` seconds (event-loop time) without failing. A failing
task never ends the daemon's TaskGroup: only cancellation (shutdown) ends a supervised task.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.core.clock import Clock
from gateway.core.metrics import Metrics

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class Health:
    """One supervised task's health, also the handle through which the task reports it."""

    name: str
    state: str = "starting"  # starting | up | failing
    failures: int = 0  # in a row, since it was last up
    restarts: int = 0
    last_error: str | None = None
    since: float | None = None  # when the state last changed
    _clock: Clock | None = None

    def up(self) -> None:
        if self.state != "up":
            if self.state == "failing":
                log.info("supervisor.recovered", task=self.name, after_failures=self.failures)
            self.state = "up"
            self.failures = 0
            self.since = self._clock.now() if self._clock else None

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "failures": self.failures, "restarts": self.restarts,
                "lastError": self.last_error, "since": self.since}


Runner = Callable[[Health], Awaitable[None]]


class Supervisor:
    def __init__(
        self,
        *,
        clock: Clock,
        metrics: Metrics,
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
        stable_after: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._clock = clock
        self._metrics = metrics
        self._initial = initial_backoff
        self._max = max_backoff
        self._stable_after = stable_after
        self._sleep = sleep
        self._jitter = jitter
        self.health: dict[str, Health] = {}
        self._stopping = False

    def stop(self) -> None:
        """Shutdown: a supervised task that ends from now on is not restarted (cancel it to end it now)."""
        self._stopping = True

    def start(self, tg: asyncio.TaskGroup, name: str, runner: Runner) -> asyncio.Task[None]:
        health = self.health[name] = Health(name, since=self._clock.now(), _clock=self._clock)
        return tg.create_task(self._supervise(health, runner), name=name)

    def report(self) -> dict[str, dict[str, Any]]:
        return {name: h.as_json() for name, h in self.health.items()}

    async def _supervise(self, health: Health, runner: Runner) -> None:
        loop = asyncio.get_running_loop()
        delay = self._initial
        while True:
            # Running this long without failing counts as healthy, for tasks that do not report up() themselves.
            stable = loop.call_later(self._stable_after, health.up)
            try:
                await runner(health)
                error, exc_info = "ended on its own", None
            except asyncio.CancelledError:
                if not self._stopping:  # cancelled by something other than shutdown: never silently gone
                    log.error("supervisor.cancelled", task=health.name)
                    health.state = "failing"
                    health.last_error = "cancelled while the gateway was running"
                raise
            except Exception as exc:
                error, exc_info = f"{type(exc).__name__}: {exc}", exc
            finally:
                stable.cancel()
            if self._stopping:
                return
            if health.state == "up":
                delay = self._initial  # it was healthy before this failure: a fresh streak
            if health.state != "failing":  # once per failure streak, with the traceback
                log.error("supervisor.task_down", task=health.name, error=error, restart_in=round(delay, 3),
                          exc_info=exc_info)
                health.state = "failing"
                health.since = self._clock.now()
            health.failures += 1
            health.restarts += 1
            health.last_error = error
            self._metrics.inc("gateway_supervised_restarts_total", 1, "restarts of supervised tasks", task=health.name)
            # Jitter in [delay/2, delay]: many gateways coming back together do not retry in step.
            await self._sleep(delay * (0.5 + self._jitter() / 2))
            delay = min(delay * 2, self._max)
