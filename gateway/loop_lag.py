"""Event-loop lag: how late the loop runs a timer, as a gauge for /metrics.

Everything in the gateway shares one event loop (broker, ingest, control, API); a blocking call anywhere
shows here first. Once a second a sleep is timed on the loop's monotonic clock; the lag is how much later
than asked it ended. ``gateway_event_loop_lag_seconds`` is the latest, ``..._max_seconds`` the worst of the
last minute (a scrape every 15-60 s would miss a spike otherwise).
"""

from __future__ import annotations

import asyncio
from collections import deque

from gateway.core.metrics import Metrics

INTERVAL_S = 1.0
WINDOW = 60  # samples in the max (one minute)


async def measure_loop_lag(metrics: Metrics, interval: float = INTERVAL_S) -> None:
    loop = asyncio.get_running_loop()
    recent: deque[float] = deque(maxlen=WINDOW)
    while True:
        started = loop.time()
        await asyncio.sleep(interval)
        lag = max(0.0, loop.time() - started - interval)
        recent.append(lag)
        metrics.set("gateway_event_loop_lag_seconds", lag, "how late the event loop ran a 1 s timer (latest)")
        metrics.set("gateway_event_loop_lag_max_seconds", max(recent), "the worst event-loop lag of the last minute")
