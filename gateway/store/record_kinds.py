"""What each kind of store record writes: one planning function per record type, and the table of them.

A new kind of record (retention, hourly rollups, alerts) is a module with its planning function (its
statements in sql.py style: a Write with its order) and one entry in RECORD_PLANNERS. Planning functions
only add rows to the plan (planner.BatchPlan); they run again for every attempt to commit their batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.core.models import (
    DeviceEvent,
    GatewayEvent,
    HubBatchClosed,
    HubPartHeld,
    HubPartsWanted,
    LifecycleStep,
    OutboxDone,
    OutboxPrune,
    Quarantined,
    Reading,
    RowWrite,
    RpcDone,
    StatusChange,
)
from gateway.store.hub_parts import HubPartsRead
from gateway.store.lifecycle_steps import LifecycleJob
from gateway.store.outbox_budget import OutboxBudgetPass
from gateway.store.planner import BatchPlan, RecordPlanner, dumps
from gateway.store.sql import (
    DELETE_HUB_PARTS,
    DELETE_OUTBOX,
    FORGET_HUB_CLOSED,
    INSERT_EVENTS,
    INSERT_HUB_CLOSED,
    INSERT_HUB_PART,
    INSERT_QUARANTINE,
    INSERT_READINGS,
    INSERT_RPC,
    UPSERT_LATEST,
    UPSERT_STATUS,
    row_write,
)

QUARANTINE_KEEP_BYTES = 4096  # a quarantined payload's head that is kept (its size and digest always)
_INT64 = (-(2**63), 2**63 - 1)


def plan_reading(rec: Reading, plan: BatchPlan) -> None:
    metrics = dumps(rec.metrics)
    plan.rows(INSERT_READINGS).append(
        (rec.device_id, rec.ts, rec.received_at, metrics, dumps(rec.extra) if rec.extra else None)
    )
    plan.readings += 1
    # The device's newest reading by its own time; last_seen is its latest arrival even when that was a
    # late, older reading. Row: [device_id, last_seen, last_ts, last_metrics]
    latest = plan.merged(UPSERT_LATEST)
    prev = latest.get(rec.device_id)
    if prev is None:
        latest[rec.device_id] = [rec.device_id, rec.received_at, rec.ts, metrics]
    elif rec.ts >= prev[2]:
        latest[rec.device_id] = [rec.device_id, max(prev[1], rec.received_at), rec.ts, metrics]
    else:
        prev[1] = max(prev[1], rec.received_at)
    if plan.outbox_on:
        plan.add_outbox("telemetry", rec.device_id, rec.ts, metrics)


def _event(plan: BatchPlan, ts: float, device_id: str | None, kind: str, data: Mapping[str, Any]) -> None:
    """An events row, and its outbox row when the outbox is on."""
    text = dumps(data)
    plan.rows(INSERT_EVENTS).append((ts, device_id, kind, text))
    if plan.outbox_on:
        plan.add_outbox("event", device_id, ts, '{"type":' + dumps(kind) + ',"data":' + text + "}")


def plan_device_event(rec: DeviceEvent, plan: BatchPlan) -> None:
    _event(plan, rec.ts, rec.device_id, rec.type, rec.data)


def plan_gateway_event(rec: GatewayEvent, plan: BatchPlan) -> None:
    _event(plan, rec.ts, None, rec.type, rec.data)


def plan_status_change(rec: StatusChange, plan: BatchPlan) -> None:
    plan.merged(UPSERT_STATUS)[rec.device_id] = (rec.device_id, int(rec.online), rec.at, rec.at)  # the last wins
    _event(plan, rec.at, rec.device_id, "device.online" if rec.online else "device.offline", {"reason": rec.reason})


def plan_quarantined(rec: Quarantined, plan: BatchPlan) -> None:
    payload = rec.payload
    plan.rows(INSERT_QUARANTINE).append((
        float(rec.received_at), rec.client_id, rec.device_id, rec.topic,
        payload if rec.whole else payload[:QUARANTINE_KEEP_BYTES],
        rec.reason, len(payload), hashlib.sha256(payload).hexdigest(),
    ))
    _event(plan, rec.received_at, rec.device_id, "quarantine", {
        "reason": rec.reason,
        "topic": rec.topic,
        "clientId": rec.client_id,
        "payload": payload[:1024].decode("utf-8", errors="replace"),
        "size": len(payload),
    })


def plan_outbox_done(rec: OutboxDone, plan: BatchPlan) -> None:
    plan.rows(DELETE_OUTBOX).extend(seq_runs(rec.seqs))


def seq_runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive seqs, in ascending order (duplicates fold into their run)."""
    runs: list[tuple[int, int]] = []
    first = last = None
    for seq in sorted(seqs):
        if last is not None and seq <= last + 1:
            last = max(last, seq)
            continue
        if first is not None and last is not None:
            runs.append((first, last))
        first = last = seq
    if first is not None and last is not None:
        runs.append((first, last))
    return runs


def plan_rpc_done(rec: RpcDone, plan: BatchPlan) -> None:
    plan.rows(INSERT_RPC).append((rec.request_id, rec.method, rec.response, rec.at))


def plan_outbox_prune(rec: OutboxPrune, plan: BatchPlan) -> None:
    plan.jobs.append(OutboxBudgetPass(rec))


def plan_hub_part(rec: HubPartHeld, plan: BatchPlan) -> None:
    plan.rows(INSERT_HUB_PART).append((rec.hub_id, rec.batch_id, rec.part, rec.parts, rec.received_at, rec.payload))


def plan_hub_batch(rec: HubBatchClosed, plan: BatchPlan) -> None:
    """The whole batch in the one transaction: its readings, what was quarantined, its held parts removed."""
    for reading in rec.readings:
        plan_reading(reading, plan)
    for quarantined in rec.quarantined:
        plan_quarantined(quarantined, plan)
    plan.rows(DELETE_HUB_PARTS).append((rec.hub_id, rec.batch_id))
    plan.rows(INSERT_HUB_CLOSED).append((rec.hub_id, rec.batch_id, rec.closed_at, int(rec.complete)))
    plan.merged(FORGET_HUB_CLOSED)[None] = (rec.forget_before,)  # one cut-off per transaction: the last


def plan_hub_parts_wanted(rec: HubPartsWanted, plan: BatchPlan) -> None:
    plan.jobs.append(HubPartsRead(rec))


def plan_lifecycle_step(rec: LifecycleStep, plan: BatchPlan) -> None:
    plan.jobs.append(LifecycleJob(rec))


def column_value(value: Any) -> Any:
    """A RowWrite value as a parameter: JSON text for a dict/list/tuple; ValueError for what cannot be stored."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        # Beyond 64 bits SQLite keeps a number as REAL (as it reads such a literal); sqlite3 refuses to bind it.
        return value if _INT64[0] <= value <= _INT64[1] else float(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value!r} cannot be stored")
        return value
    if isinstance(value, dict | list | tuple):
        return dumps(value)
    raise ValueError(f"cannot store {type(value).__name__}")


def plan_row_write(rec: RowWrite, plan: BatchPlan) -> None:
    columns = tuple(rec.row)
    plan.rows(row_write(rec.table, columns, rec.delete)).append(tuple(column_value(rec.row[c]) for c in columns))


RECORD_PLANNERS: dict[type, RecordPlanner] = {
    Reading: plan_reading,
    Quarantined: plan_quarantined,
    DeviceEvent: plan_device_event,
    StatusChange: plan_status_change,
    OutboxDone: plan_outbox_done,
    OutboxPrune: plan_outbox_prune,
    RpcDone: plan_rpc_done,
    RowWrite: plan_row_write,
    HubPartHeld: plan_hub_part,
    HubBatchClosed: plan_hub_batch,
    HubPartsWanted: plan_hub_parts_wanted,
    GatewayEvent: plan_gateway_event,
    LifecycleStep: plan_lifecycle_step,
}
