"""Every record kind through the store writer on a real SQLite file, both commit paths (a trickle on the
event loop's thread, a batch on the worker thread): text a device controls comes back byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.core.clock import ManualClock
from gateway.core.metrics import Metrics
from gateway.core.models import (
    DeviceEvent,
    HubBatchClosed,
    HubPartHeld,
    OutboxDone,
    Quarantined,
    Reading,
    RowWrite,
    RpcDone,
    StatusChange,
    StoreRecord,
)
from gateway.store import transaction
from gateway.store.writer import INLINE_COMMIT_MAX, StoreWriter

# Quotes, statement separators, comments, a NUL, non-ASCII (a line separator, accents, CJK, an emoji).
HOSTILE = ["it's", "x'); DROP TABLE readings; --", "nul\x00byte", "uni\u2028code ü 漢 🙂", '"quoted"', "a;b--c\\"]


def records_for(text: str, i: int) -> list[StoreRecord]:
    device = f"AP-{i} {text}"
    return [
        Reading(device, 1763800000.0 + i, {"pm25": 1.5}, 1763800000.5 + i, {"note": text}),
        Quarantined(1763800000.0 + i, f"client {text}", f"device/{text}/data", text.encode() + b"\xff\x00",
                    f"reason {text}", device),
        DeviceEvent(1763800001.0 + i, device, f"type {text}", {"text": text}),
        StatusChange(device, True, 1763800002.0 + i, f"why {text}"),
        RpcDone(f'"{text}"', f"method {text}", json.dumps({"result": text}), 1763800003.0 + i),
        RowWrite("command_log", {"command_id": f"c{i} {text}", "device_id": device, "action": text, "value": 3,
                                 "source": "api", "status": "pending", "attempts": 0, "created_at": 1.0,
                                 "state": {"text": text}, "note": text}),
        HubPartHeld(f"HUB {text}", f"open {text}", 1, 2, 1763800004.0 + i, text.encode() + b"\xff\x00"),
        HubBatchClosed(f"HUB {text}", f"done {text}", 1763800005.0 + i, True,
                       (Reading(f"T-{i} {text}", 1763800005.0 + i, {"t": 1}, 1763800005.5 + i, {"hub": text}),),
                       (Quarantined(1763800005.0 + i, "HUB", f"device/{text}/batch", text.encode(), text,
                                    f"T-{i} {text}"),),
                       0.0),
    ]


async def store(path: Path, groups: list[list[StoreRecord]]) -> set[int]:
    """Commit each group as one batch of a fresh writer; returns the threads the transactions ran on."""
    threads: set[int] = set()
    run = transaction.run

    def spy(db: sqlite3.Connection, statements: Any) -> None:
        threads.add(threading.get_ident())
        run(db, statements)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transaction, "run", spy)
        for group in groups:
            writer = StoreWriter(path, metrics=Metrics(), outbox=True, clock=ManualClock())
            await writer.open()
            for rec in group:  # queued before the writer runs: its first batch takes them all, at once
                await writer.put(rec)
            task = asyncio.create_task(writer.run())
            await asyncio.wait_for(writer.flush(), 10)
            await writer.close()
            await task
    return threads


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        return {table: conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
                for table in ("readings", "device_state", "quarantine", "events", "outbox", "rpc_log", "command_log",
                              "hub_parts", "hub_batches_closed")}


def all_records() -> list[StoreRecord]:
    return [rec for i, text in enumerate(HOSTILE) for rec in records_for(text, i)]


def in_groups(records: list[StoreRecord], size: int) -> list[list[StoreRecord]]:
    return [records[i:i + size] for i in range(0, len(records), size)]


@pytest.mark.parametrize("path_name", ["trickle", "batch"])
async def test_device_controlled_text_round_trips_byte_exact(tmp_path: Path, path_name: str) -> None:
    records = all_records()
    trickle = path_name == "trickle"
    groups = in_groups(records, 6) if trickle else [records]
    assert all(len(g) <= INLINE_COMMIT_MAX for g in groups) == trickle
    threads = await store(tmp_path / "g.db", groups)
    assert (threads == {threading.get_ident()}) == trickle  # the path this case is about was taken

    rows = dump(tmp_path / "g.db")
    for i, text in enumerate(HOSTILE):
        device = f"AP-{i} {text}"
        assert (device, 1763800000.0 + i, 1763800000.5 + i, '{"pm25":1.5}', json.dumps({"note": text},
                ensure_ascii=False, separators=(",", ":"))) in [r[1:] for r in rows["readings"]]
        payload = text.encode() + b"\xff\x00"
        assert (1763800000.0 + i, f"client {text}", device, f"device/{text}/data", payload, f"reason {text}",
                len(payload), hashlib.sha256(payload).hexdigest()) in [r[1:] for r in rows["quarantine"]]
        events = {r[3]: (r[2], json.loads(r[4])) for r in rows["events"] if r[2] == device}
        assert events[f"type {text}"] == (device, {"text": text})
        assert events["device.online"] == (device, {"reason": f"why {text}"})
        assert events["quarantine"][1]["clientId"] == f"client {text}"
        assert events["quarantine"][1]["topic"] == f"device/{text}/data"
        assert (f'"{text}"', f"method {text}", json.dumps({"result": text}), 1763800003.0 + i) in rows["rpc_log"]
        assert (f"HUB {text}", f"open {text}", 1, 2, 1763800004.0 + i, text.encode() + b"\xff\x00") in rows["hub_parts"]
        assert (f"HUB {text}", f"done {text}", 1763800005.0 + i, 1) in rows["hub_batches_closed"]
        assert (f"T-{i} {text}", 1763800005.0 + i) in [r[1:3] for r in rows["readings"]]
        [command] = [r for r in rows["command_log"] if r[0] == f"c{i} {text}"]
        assert command[1:3] == (device, text) and command[12:14] == (json.dumps({"text": text}, ensure_ascii=False,
                                                                                separators=(",", ":")), text)
        [state] = [r for r in rows["device_state"] if r[0] == device]
        assert state[1:3] == (1, 1763800002.0 + i)
    assert {r[2] for r in rows["outbox"]} == {f"{d}-{i} {t}" for i, t in enumerate(HOSTILE) for d in ("AP", "T")}
    assert [r[0] for r in rows["outbox"]] == list(range(1, 6 * len(HOSTILE) + 1))  # a hub batch: reading, quarantine


async def test_a_trickle_and_a_batch_store_identical_rows_for_every_record_kind(tmp_path: Path) -> None:
    records = all_records()
    records.insert(10, OutboxDone((1, 2)))  # rows committed by an earlier group (a trickle) or this batch
    command = next(r for r in records if isinstance(r, RowWrite))
    records.append(RowWrite("command_log", {**command.row, "status": "acked", "attempts": 1}))
    trickled = await store(tmp_path / "trickle.db", in_groups(records, 4))
    batched = await store(tmp_path / "batch.db", [records[:20], records[20:]])
    assert trickled == {threading.get_ident()} and threading.get_ident() not in batched
    trickle, batch = dump(tmp_path / "trickle.db"), dump(tmp_path / "batch.db")
    assert trickle == batch
    assert [r[5] for r in trickle["command_log"] if r[0] == "c0 it's"] == ["acked"]
    assert [r[0] for r in trickle["outbox"]][:2] == [3, 4]  # 1 and 2 acknowledged and deleted

