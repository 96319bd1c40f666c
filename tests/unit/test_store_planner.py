"""The batch planner alone (no SQLite, no event loop): what each record kind writes, in which order, with
which outbox seqs; and that no record's text ever becomes part of a statement."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.models import (
    DeviceEvent,
    OutboxDone,
    OutboxEntry,
    OutboxPrune,
    Quarantined,
    Reading,
    RowWrite,
    RpcDone,
    StatusChange,
)
from gateway.store import sql
from gateway.store.outbox_budget import OutboxBudgetPass
from gateway.store.planner import BatchPlan, plan_batch
from gateway.store.record_kinds import QUARANTINE_KEEP_BYTES, RECORD_PLANNERS, seq_runs

NOW = 1763800100.0


def plan(records: list[Any], *, next_seq: int = 1, outbox_on: bool = True) -> BatchPlan:
    return plan_batch(records, RECORD_PLANNERS, next_seq=next_seq, now=NOW, outbox_on=outbox_on)


def rows_by_name(p: BatchPlan) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for write, rows in p.steps():
        out.setdefault(write.name, []).extend(rows)
    return out


def test_a_reading_plans_its_row_the_device_latest_and_a_telemetry_outbox_row() -> None:
    p = plan([Reading("AP-01", 10.0, {"pm25": 1.5, "power": True}, 10.5, {"fw": "1.2"})], next_seq=7)
    assert rows_by_name(p) == {
        "readings": [("AP-01", 10.0, 10.5, '{"pm25":1.5,"power":true}', '{"fw":"1.2"}')],
        "latest": [["AP-01", 10.5, 10.0, '{"pm25":1.5,"power":true}']],
        "outbox": [(7, "telemetry", "AP-01", 10.0, '{"pm25":1.5,"power":true}', 25, NOW)],
    }
    assert p.outbox == [OutboxEntry(7, "telemetry", "AP-01", 10.0, '{"pm25":1.5,"power":true}')]
    assert p.next_seq == 8 and p.readings == 1 and p.jobs == []


def test_latest_keeps_the_newest_reading_by_its_own_time_and_the_latest_arrival() -> None:
    p = plan([
        Reading("AP-01", 20.0, {"pm25": 2.0}, 20.5),
        Reading("AP-02", 5.0, {"pm25": 9.0}, 5.5),
        Reading("AP-01", 10.0, {"pm25": 1.0}, 30.0),  # late and older: only last_seen moves
        Reading("AP-01", 25.0, {"pm25": 3.0}, 26.0),
    ], outbox_on=False)
    rows = rows_by_name(p)
    assert rows["latest"] == [["AP-01", 30.0, 25.0, '{"pm25":3.0}'], ["AP-02", 5.5, 5.0, '{"pm25":9.0}']]
    assert [r[1] for r in rows["readings"]] == [20.0, 5.0, 10.0, 25.0]  # every reading, in order
    assert "outbox" not in rows and p.outbox == [] and p.next_seq == 1  # outbox off: no seq taken


def test_a_quarantined_payload_keeps_its_head_size_and_digest_and_becomes_an_event() -> None:
    payload = b"\xff\x00garbage" * 1000
    q = Quarantined(10.0, "client-1", "device/AP-01/data", payload, "not JSON", "AP-01")
    rows = rows_by_name(plan([q], next_seq=3))
    assert rows["quarantine"] == [(10.0, "client-1", "AP-01", "device/AP-01/data", payload[:QUARANTINE_KEEP_BYTES],
                                   "not JSON", len(payload), hashlib.sha256(payload).hexdigest())]
    [(ts, device, kind, data)] = rows["events"]
    assert (ts, device, kind) == (10.0, "AP-01", "quarantine")
    assert json.loads(data) == {"reason": "not JSON", "topic": "device/AP-01/data", "clientId": "client-1",
                                "payload": payload[:1024].decode("utf-8", errors="replace"), "size": len(payload)}
    [outbox] = rows["outbox"]
    assert outbox[:4] == (3, "event", "AP-01", 10.0)
    assert json.loads(outbox[4]) == {"type": "quarantine", "data": json.loads(data)}


def test_device_events_and_status_changes_plan_events_and_the_last_status_per_device_wins() -> None:
    p = plan([
        StatusChange("AP-01", True, 10.0, "connected"),
        DeviceEvent(11.0, "AP-01", "filter.warning", {"filterLife": 9}),
        StatusChange("AP-02", True, 12.0, "connected"),
        StatusChange("AP-01", False, 13.0, "disconnected"),
    ], next_seq=100)
    rows = rows_by_name(p)
    assert rows["status"] == [("AP-01", 0, 13.0, 13.0), ("AP-02", 1, 12.0, 12.0)]  # first-seen order, last value
    assert rows["events"] == [
        (10.0, "AP-01", "device.online", '{"reason":"connected"}'),
        (11.0, "AP-01", "filter.warning", '{"filterLife":9}'),
        (12.0, "AP-02", "device.online", '{"reason":"connected"}'),
        (13.0, "AP-01", "device.offline", '{"reason":"disconnected"}'),
    ]
    assert [(e.seq, e.kind, e.body) for e in p.outbox] == [
        (100, "event", '{"type":"device.online","data":{"reason":"connected"}}'),
        (101, "event", '{"type":"filter.warning","data":{"filterLife":9}}'),
        (102, "event", '{"type":"device.online","data":{"reason":"connected"}}'),
        (103, "event", '{"type":"device.offline","data":{"reason":"disconnected"}}'),
    ]


def test_outbox_done_rpc_done_and_prune_plan_deletes_an_answer_and_a_job() -> None:
    rule = OutboxPrune(NOW, 10, 1000, 60.0, 5)
    p = plan([OutboxDone((4, 5)), RpcDone('"r-1"', "reboot", '{"ok":true}', 9.0), rule, OutboxDone((6,))])
    assert rows_by_name(p) == {"outbox_done": [(4, 5), (6, 6)], "rpc": [('"r-1"', "reboot", '{"ok":true}', 9.0)]}
    [job] = p.jobs
    assert isinstance(job, OutboxBudgetPass) and job.rule is rule
    assert p.outbox == [] and p.next_seq == 1


def test_row_writes_bind_every_value_and_keep_their_order() -> None:
    row = {"command_id": "c'1; --", "device_id": "AP-01", "power": True, "state": {"fanSpeed": 3}, "note": None}
    p = plan([
        RowWrite("command_log", row),
        RowWrite("desired_layers", {"device_id": "AP-01", "layer": "manual"}, delete=True),
        RowWrite("desired_layers", {"device_id": "AP-01", "layer": "manual", "power": 1}),
        RowWrite("desired_layers", {"device_id": "AP-02", "layer": "manual", "power": 0}),
        RowWrite("schedule_runs", {"schedule_id": 1, "phase": "start"}),
    ])
    steps = [(write.row_sql, list(rows)) for write, rows in p.steps()]
    assert steps == [
        ("INSERT INTO command_log (command_id, device_id, power, state, note) VALUES (?, ?, ?, ?, ?) "
         "ON CONFLICT (command_id) DO UPDATE SET device_id = excluded.device_id, power = excluded.power, "
         "state = excluded.state, note = excluded.note", [("c'1; --", "AP-01", 1, '{"fanSpeed":3}', None)]),
        ("DELETE FROM desired_layers WHERE device_id = ? AND layer = ?", [("AP-01", "manual")]),
        ("INSERT INTO desired_layers (device_id, layer, power) VALUES (?, ?, ?) ON CONFLICT (device_id, layer) "
         "DO UPDATE SET power = excluded.power", [("AP-01", "manual", 1), ("AP-02", "manual", 0)]),
        ("INSERT INTO schedule_runs (schedule_id, phase) VALUES (?, ?)", [(1, "start")]),
    ]


@pytest.mark.parametrize("record", [
    RowWrite("no_such_table", {"x": 1}),
    RowWrite("command_log", {"command_id": "c1", "bad column": 1}),
    RowWrite("desired_layers", {"device_id": "AP-01"}, delete=True),  # not the whole key
    RowWrite("schedule_runs", {"id": 1}, delete=True),  # a history: no deletes
    RowWrite("command_log", {"command_id": "c1", "value": float("nan")}),
    RowWrite("command_log", {"command_id": "c1", "value": object()}),
    Reading("AP-01", 1.0, {"pm25": float("inf")}, 1.0),
])
def test_a_record_that_cannot_be_stored_is_a_value_error(record: Any) -> None:
    with pytest.raises(ValueError):
        plan([record])


def test_a_record_of_no_registered_kind_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not a store record"):
        plan(["a string"])


def test_commit_order_and_outbox_seqs_follow_the_records_across_kinds() -> None:
    records: list[Any] = [
        RpcDone("1", "m", "r", 1.0),
        OutboxDone((1,)),
        Quarantined(1.0, None, "t", b"x", "bad"),
        Reading("AP-01", 1.0, {"pm25": 1.0}, 1.0),
        StatusChange("AP-01", True, 2.0, "status"),
        DeviceEvent(3.0, "AP-01", "x", {}),
        RowWrite("schedules", {"id": 1}, delete=True),
        Reading("AP-02", 4.0, {"pm25": 1.0}, 4.0),
    ]
    first = plan(records, next_seq=50)
    assert [write.name for write, _ in first.steps()] == [
        "schedules.delete", "readings", "latest", "status", "events", "quarantine", "outbox", "outbox_done", "rpc"]
    assert [(e.seq, e.kind, e.device_id) for e in first.outbox] == [
        (50, "event", None), (51, "telemetry", "AP-01"), (52, "event", "AP-01"), (53, "event", "AP-01"),
        (54, "telemetry", "AP-02")]
    assert first.next_seq == 55
    again = plan(records, next_seq=50)  # a retried batch is planned again: the same msgIds
    assert again.outbox == first.outbox and again.steps() == first.steps()


HOSTILE = ["it's", "'); DROP TABLE readings; --", "nul\x00byte", "uni\u2028code ü 漢", '"quoted"', "a;b--c"]


def test_no_record_text_ever_reaches_a_statement() -> None:
    records: list[Any] = []
    for text in HOSTILE:
        records += [
            Reading(text, 1.0, {"pm25": 1.0}, 1.0, {"note": text}),
            Quarantined(1.0, text, text, text.encode(), text, text),
            DeviceEvent(1.0, text, text, {"text": text}),
            StatusChange(text, True, 1.0, text),
            RpcDone(text, text, text, 1.0),
            RowWrite("command_log", {"command_id": text, "note": text}),
            RowWrite("desired_layers", {"device_id": text, "layer": text}, delete=True),
        ]
    p = plan(records)
    statements = [(w.row_sql, w.bulk or "") for w, _ in p.steps()]
    assert len(statements) >= 8
    for text in HOSTILE:
        assert not any(text in row_sql or text in bulk_sql for row_sql, bulk_sql in statements)
    for write, rows in p.steps():
        assert write.row_sql.count("?") == write.width, write.name
        assert all(len(row) == write.width for row in rows), write.name


@dataclass(frozen=True, slots=True)
class Alert:
    """A record kind the store does not know: added by one planning function and one registration."""

    device_id: str
    text: str


ALERTS = sql.insert_write("alerts", 45, "INSERT INTO alerts (device_id, text)", 2)


def test_a_new_record_kind_is_a_planning_function_and_one_registration() -> None:
    def plan_alert(rec: Alert, p: BatchPlan) -> None:
        p.rows(ALERTS).append((rec.device_id, rec.text))
        if p.outbox_on:
            p.add_outbox("event", rec.device_id, 0.0, rec.text)

    planners = {**RECORD_PLANNERS, Alert: plan_alert}
    p = plan_batch([Alert("AP-01", "hot"), DeviceEvent(1.0, "AP-01", "x", {}), Alert("AP-02", "cold")], planners,
                   next_seq=1, now=NOW, outbox_on=True)
    assert [(w.name, list(rows)) for w, rows in p.steps()][:2] == [
        ("events", [(1.0, "AP-01", "x", "{}")]), ("alerts", [("AP-01", "hot"), ("AP-02", "cold")])]
    assert [(e.seq, e.body) for e in p.outbox] == [(1, "hot"), (2, '{"type":"x","data":{}}'), (3, "cold")]


def test_bulk_statements_cover_every_row_with_few_distinct_sizes_within_the_parameter_limit() -> None:
    for rows in (1, 15, 16, 17, 250, 256, 257, 1000, 5000):
        for width, limit in ((5, 32766), (8, 999), (1, 999)):
            chunks = sql.bulk_sizes(rows, width, limit)
            assert sum(real for real, _ in chunks) == rows
            assert all(real <= size <= sql.BULK_MAX_ROWS and size * width + 1 <= limit for real, size in chunks)
            assert all(size & (size - 1) == 0 for _, size in chunks)  # powers of two: few statements to prepare
            assert sum(1 for real, size in chunks if real < size) <= 1  # only the last one is padded
    statement = sql.bulk_sql(sql.INSERT_QUARANTINE, 16)
    assert statement.count("?") == 16 * 8 + 1 and statement.startswith("INSERT INTO quarantine (")


def test_acknowledged_seqs_are_deleted_as_runs_that_cover_exactly_them() -> None:
    assert seq_runs([7, 3, 4, 5, 9, 8, 12, 4]) == [(3, 5), (7, 9), (12, 12)]
    assert seq_runs([]) == []


@given(st.sets(st.integers(min_value=1, max_value=400), max_size=120))
def test_seq_runs_cover_every_seq_and_nothing_else(seqs: set[int]) -> None:
    runs = seq_runs(list(seqs))
    assert {s for first, last in runs for s in range(first, last + 1)} == seqs
    assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(runs))  # disjoint, not adjacent
