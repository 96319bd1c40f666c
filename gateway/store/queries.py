"""Read queries on the store (any connection; WAL lets them run beside the writer)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import aiosqlite
import structlog

from gateway.core.models import DeviceState
from gateway.store.reading_blocks import CorruptBlockError, decode

log = structlog.get_logger(__name__)


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
            "SELECT ts, metrics, extra FROM raw_rows WHERE device_id = ? ORDER BY ts DESC LIMIT ?",
            (device_id, per_device),
        ) as cur:
            rows = [(ts, json.loads(metrics), json.loads(extra) if extra else {}) async for ts, metrics, extra in cur]
        if len(rows) < per_device:  # a device quiet for hours: its last readings are compacted (compaction.py)
            rows = await _with_compacted(conn, device_id, rows, per_device)
        for ts, metrics, extra in reversed(rows):
            out.append((device_id, ts, metrics, extra))
    return out


async def _with_compacted(conn: aiosqlite.Connection, device_id: str, rows: list[tuple[float, Any, Any]],
                          per_device: int) -> list[tuple[float, Any, Any]]:
    """The device's newest rows and, older than them, its newest compacted readings: `per_device` in all, newest
    first."""
    older: list[tuple[float, Any, Any]] = []
    async with conn.execute("SELECT hour, data FROM reading_hours WHERE device_id = ? ORDER BY hour DESC",
                            (device_id,)) as cur:
        async for hour, data in cur:
            try:
                entries = decode(data)
            except CorruptBlockError as exc:  # start-up goes on: this memory only recognises resends
                log.error("store.block_corrupt", device_id=device_id, hour=hour, error=str(exc))
                continue
            older.extend((ts, metrics, extra or {}) for ts, _, metrics, extra in reversed(entries))
            if len(rows) + len(older) >= per_device:
                break
    return sorted(rows + older, key=lambda r: -r[0])[:per_device]


async def load_hub_part_sizes(conn: aiosqlite.Connection) -> list[tuple[str, str, int, int, int, float]]:
    """The parts of hub batches still open at the last stop, without their payloads (read back when their batch
    closes): (hub, batch, part, parts, size in bytes, received_at)."""
    async with conn.execute(
        "SELECT hub_id, batch_id, part, parts, length(payload), received_at FROM hub_parts ORDER BY received_at, part"
    ) as cur:
        return [(str(h), str(b), int(p), int(n), int(size), float(at)) async for h, b, p, n, size, at in cur]


async def load_hub_closed(conn: aiosqlite.Connection, since: float) -> list[tuple[str, str, float, bool]]:
    """Hub batches closed at or after `since`: (hub, batch, closed at, complete), oldest first."""
    async with conn.execute(
        "SELECT hub_id, batch_id, closed_at, complete FROM hub_batches_closed WHERE closed_at >= ? ORDER BY closed_at",
        (since,),
    ) as cur:
        return [(str(h), str(b), float(at), bool(done)) async for h, b, at, done in cur]
