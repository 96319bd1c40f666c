"""Read queries on the store (any connection; WAL lets them run beside the writer)."""

from __future__ import annotations

import json

import aiosqlite

from gateway.core.models import DeviceState


async def load_device_states(conn: aiosqlite.Connection) -> dict[str, DeviceState]:
    states: dict[str, DeviceState] = {}
    async with conn.execute(
        "SELECT device_id, online, status_changed_at, last_seen, last_ts, last_metrics FROM device_state"
    ) as cur:
        async for device_id, online, changed, last_seen, last_ts, last_metrics in cur:
            states[device_id] = DeviceState(
                device_id=device_id,
                online=bool(online),
                status_changed_at=changed,
                last_seen=last_seen,
                last_ts=last_ts,
                last_metrics=json.loads(last_metrics) if last_metrics else {},
            )
    return states
