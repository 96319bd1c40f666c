"""Read queries on the store (any connection; WAL lets them run beside the writer)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

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


async def load_recent_readings(
    conn: aiosqlite.Connection, devices: Iterable[str], per_device: int
) -> list[tuple[str, float, dict[str, Any], dict[str, Any]]]:
    """(device, ts, metrics, extra) of each device's last `per_device` readings, oldest first per device."""
    out: list[tuple[str, float, dict[str, Any], dict[str, Any]]] = []
    for device_id in devices:
        async with conn.execute(
            "SELECT ts, metrics, extra FROM readings WHERE device_id = ? ORDER BY ts DESC LIMIT ?",
            (device_id, per_device),
        ) as cur:
            rows = list(await cur.fetchall())
        for ts, metrics, extra in reversed(rows):
            out.append((device_id, ts, json.loads(metrics), json.loads(extra) if extra else {}))
    return out
