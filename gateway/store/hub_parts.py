"""Reading back the held parts of a hub batch that closes (a HubPartsWanted record): a job on the writer's
connection, after the transaction of the batch that carried the record.

The demultiplexer keeps only part numbers and sizes in memory; the parts wait in `hub_parts` (written before
each part's PUBACK). The job runs in the writer's order, so every part put before the request is committed and
found; it answers the request's future with (part, payload, received_at) rows in part order.
"""

from __future__ import annotations

import sqlite3

import aiosqlite
import structlog

from gateway.core.models import HubPartsWanted, StoredPart
from gateway.store import aiosqlite_access
from gateway.store.planner import JobContext

log = structlog.get_logger(__name__)

SELECT_HUB_PARTS = "SELECT part, payload, received_at FROM hub_parts WHERE hub_id = ? AND batch_id = ? ORDER BY part"


def _read(raw: sqlite3.Connection, hub_id: str, batch_id: str) -> list[StoredPart]:
    rows = raw.execute(SELECT_HUB_PARTS, (hub_id, batch_id)).fetchall()
    return [(int(part), bytes(payload), float(at)) for part, payload, at in rows]


class HubPartsRead:
    """A planner.Job: the parts of one batch, read on the writer's worker thread in one hand-off."""

    __slots__ = ("request",)

    def __init__(self, request: HubPartsWanted) -> None:
        self.request = request

    async def __call__(self, conn: aiosqlite.Connection, context: JobContext) -> None:
        request = self.request
        try:
            parts = await aiosqlite_access.on_worker_thread(
                conn, _read, aiosqlite_access.raw_connection(conn), request.hub_id, request.batch_id)
        except Exception as exc:  # the database's refusal or a bug: its waiter hears of it either way
            context.metrics.inc("gateway_hub_part_read_errors_total", 1, "held hub parts that could not be read back")
            log.error("hubs.parts_read_failed", hub_id=request.hub_id, batch_id=request.batch_id, error=str(exc))
            if not request.reply.done():
                request.reply.set_exception(exc)
            return
        if not request.reply.done():  # its waiter may have been cancelled (shutdown)
            request.reply.set_result(parts)
