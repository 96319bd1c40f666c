"""The outbox's disk budget and TTL (an OutboxPrune record): a pass in its own transaction after a batch.

Expired rows go first (telemetry and events alike); then, over the row or byte budget, the oldest
telemetry; events only past their hard cap. What was dropped is recorded as an `outbox.dropped` event
(and sent to the cloud as one, when the outbox is on), counted and logged.
"""

from __future__ import annotations

from typing import Any

import aiosqlite
import structlog

from gateway.core.models import OutboxPrune
from gateway.store.planner import JobContext, dumps
from gateway.store.sql import (
    INSERT_EVENTS,
    INSERT_OUTBOX,
    OUTBOX_DROP_OLDEST_TELEMETRY,
    OUTBOX_EVENTS_OVER_CAP,
    OUTBOX_EXPIRE,
    OUTBOX_TOTALS,
)

log = structlog.get_logger(__name__)


class OutboxBudgetPass:
    """One pass of the budget `rule` (a planner.Job)."""

    __slots__ = ("rule",)

    def __init__(self, rule: OutboxPrune) -> None:
        self.rule = rule

    async def __call__(self, conn: aiosqlite.Connection, context: JobContext) -> None:
        try:
            await conn.execute("BEGIN")
            dropped = await self._drop(conn)
            if dropped:
                await self._record(conn, context, dropped)
            await conn.execute("COMMIT")
        except Exception as exc:  # never leave the writer's connection inside this transaction
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            context.metrics.inc("gateway_outbox_prune_errors_total", 1, "failed budget/TTL passes")
            log.error("outbox.prune_failed", error=str(exc))
            return
        for kind, count in dropped.items():
            context.metrics.inc("gateway_outbox_dropped_total", count, "outbox rows given up", kind=kind)
        if dropped:
            log.warning("outbox.dropped", dropped=dropped)

    async def _drop(self, conn: aiosqlite.Connection) -> dict[str, int]:
        rule = self.rule
        dropped: dict[str, int] = {}

        async def delete(kind: str, sql: str, params: tuple[Any, ...]) -> None:
            cur = await conn.execute(sql, params)
            if cur.rowcount > 0:
                dropped[kind] = dropped.get(kind, 0) + cur.rowcount

        expired = rule.now - rule.ttl_seconds
        await delete("telemetry", OUTBOX_EXPIRE, ("telemetry", expired))
        await delete("event", OUTBOX_EXPIRE, ("event", expired))
        async with conn.execute(OUTBOX_TOTALS) as cur:
            count_row = await cur.fetchone()
        rows, size = (int(count_row[0]), int(count_row[1])) if count_row else (0, 0)
        if rows > rule.max_rows or size > rule.max_bytes:
            # Oldest telemetry until both limits hold (average row size estimates the bytes to free).
            excess_rows = rows - rule.max_rows
            average = size / rows if rows else 1.0
            excess_bytes = int((size - rule.max_bytes) / average) + 1 if size > rule.max_bytes else 0
            await delete("telemetry", OUTBOX_DROP_OLDEST_TELEMETRY, (max(excess_rows, excess_bytes),))
        await delete("event", OUTBOX_EVENTS_OVER_CAP, (rule.events_hard_cap,))
        return dropped

    async def _record(self, conn: aiosqlite.Connection, context: JobContext, dropped: dict[str, int]) -> None:
        now = self.rule.now
        data = dumps({"dropped": dropped, "reason": "outbox budget or TTL"})
        await conn.execute(INSERT_EVENTS.row_sql, (now, None, "outbox.dropped", data))
        if context.take_seq is not None:
            body = '{"type":"outbox.dropped","data":' + data + "}"
            await conn.execute(INSERT_OUTBOX.row_sql, (context.take_seq(), "event", None, now, body, len(body), now))
