"""The outbox budget pass (OutboxPrune) through the store writer on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from gateway.core.clock import ManualClock
from gateway.core.metrics import Metrics
from gateway.core.models import DeviceEvent, OutboxEntry, OutboxPrune, Reading
from gateway.store.writer import StoreWriter


async def test_the_budget_drops_oldest_telemetry_and_events_over_their_cap_and_the_seqs_stay_in_line(
    tmp_path: Path,
) -> None:
    clock, metrics = ManualClock(), Metrics()
    writer = StoreWriter(tmp_path / "g.db", metrics=metrics, outbox=True, clock=clock)
    live: list[OutboxEntry] = []
    writer.on_outbox.append(live.extend)
    await writer.open()
    task = asyncio.create_task(writer.run())
    try:
        for i in range(10):
            await writer.put(Reading("AP-01", 1763800000.0 + i, {"pm25": float(i)}, 1763800000.5 + i))
        for i in range(3):
            await writer.put(DeviceEvent(1763800010.0 + i, "AP-01", "fan.changed", {"fanSpeed": i}))
        await writer.flush()
        assert writer.last_seq == 13
        # 13 rows, 5 allowed: the 8 oldest telemetry rows go; of the events only the newest 2 are kept.
        await writer.put(OutboxPrune(clock.now(), max_rows=5, max_bytes=10**9, ttl_seconds=1e9, events_hard_cap=2))
        await writer.flush()
        assert writer.last_seq == 14  # the outbox.dropped event took the next seq
        await writer.put(Reading("AP-01", 1763800020.0, {"pm25": 1.0}, 1763800020.5))
        await writer.flush()
    finally:
        await writer.close()
        await task
    assert writer.last_seq == 15
    assert [e.seq for e in live] == [*range(1, 14), 15]  # the budget's own row is backlog, not live
    assert metrics.value("gateway_outbox_dropped_total", kind="telemetry") == 8
    assert metrics.value("gateway_outbox_dropped_total", kind="event") == 1
    with sqlite3.connect(tmp_path / "g.db") as conn:
        outbox = conn.execute("SELECT seq, kind, body FROM outbox ORDER BY seq").fetchall()
        [(event_data,)] = conn.execute("SELECT data FROM events WHERE type = 'outbox.dropped'").fetchall()
    assert [(seq, kind) for seq, kind, _ in outbox] == [
        (9, "telemetry"), (10, "telemetry"), (12, "event"), (13, "event"), (14, "event"), (15, "telemetry")]
    dropped = {"dropped": {"telemetry": 8, "event": 1}, "reason": "outbox budget or TTL"}
    assert json.loads(event_data) == dropped
    assert json.loads(outbox[4][2]) == {"type": "outbox.dropped", "data": dropped}
