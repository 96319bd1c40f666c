"""How long each kind of data lifecycle step held the store writer's connection: a histogram per step kind.

A step (store/lifecycle_steps.py) runs on the writer's one connection after a batch; every reading that
arrives meanwhile waits for it, so the longest steps are what the lifecycle adds to publish -> committed. The
time a step held the connection is measured on the worker thread around the step alone (not its wait in the
writer's queue), which a p99 of publish -> committed on a shared machine cannot tell apart from everything else.

Buckets are geometric (x1.25 from 0.1 ms): a quantile is the upper bound of its bucket (at most 25 % high);
the maximum is exact. Per step kind, /metrics shows how many steps ran, their total seconds and the longest.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from gateway.core.metrics import Metrics

BOUNDS_S = tuple(0.0001 * 1.25 ** k for k in range(56))  # 0.1 ms .. ~20 s; beyond: the last bucket


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS_S) + 1))
    count: int = 0
    total: float = 0.0
    longest: float = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS_S, seconds)] += 1
        self.count += 1
        self.total += seconds
        self.longest = max(self.longest, seconds)

    def quantile(self, q: float) -> float:
        """Seconds that at least a fraction q of the steps took no more than (a bucket's upper bound; the
        longest step's time for the last bucket or when that is less)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return min(self.longest, BOUNDS_S[index]) if index < len(BOUNDS_S) else self.longest
        return self.longest


class StepHolds:
    """A histogram per step kind (a LifecycleStep's action), also counted in the metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.by_action: dict[str, Histogram] = {}

    def record(self, action: str, seconds: float) -> None:
        hist = self.by_action.get(action)
        if hist is None:
            hist = self.by_action[action] = Histogram()
        hist.add(seconds)
        metrics = self._metrics
        metrics.inc("gateway_lifecycle_steps_total", 1, "data lifecycle steps run, by kind", action=action)
        metrics.inc("gateway_lifecycle_step_seconds_total", seconds,
                    "seconds data lifecycle steps held the store writer's connection, by kind", action=action)
        metrics.set("gateway_lifecycle_step_max_seconds", hist.longest,
                    "the longest a data lifecycle step held the store writer's connection, by kind", action=action)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per step kind: steps, and p50, p99 and max in milliseconds."""
        return {action: {"steps": float(h.count), "p50_ms": h.quantile(0.5) * 1000, "p99_ms": h.quantile(0.99) * 1000,
                         "max_ms": h.longest * 1000} for action, h in sorted(self.by_action.items())}
