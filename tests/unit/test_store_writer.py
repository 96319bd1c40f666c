"""The store writer on a real SQLite file: device-controlled strings cannot break or inject SQL."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from gateway.core.errors import StoreClosedError
from gateway.core.metrics import Metrics
from gateway.core.models import Quarantined, Reading
from gateway.store.writer import StoreWriter

HOSTILE = ["it's", "'); DROP TABLE readings; --", "nul\x00byte", "uni\u2028code", "back\\slash", '"quoted"']


async def test_hostile_strings_are_stored_verbatim_and_the_writer_keeps_running(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics(), outbox=True)
    await writer.open()
    task = asyncio.create_task(writer.run())
    for i, text in enumerate(HOSTILE):
        await writer.put(Reading("AP-01", 1763800000.0 + i, {"pm25": 1.0}, 1763800000.5, {"note": text}))
        await writer.put(Quarantined(1763800000.0, text, "device/AP-01/data", text.encode(), text, "AP-01"))
    await asyncio.wait_for(writer.flush(), 10)  # a writer that died on the NUL would leave this hanging
    await writer.close()
    await task
    with sqlite3.connect(tmp_path / "g.db") as conn:
        notes = [json.loads(e)["note"] for (e,) in conn.execute("SELECT extra FROM readings ORDER BY id")]
        assert notes == HOSTILE  # JSON keeps even the NUL
        rows = conn.execute("SELECT client_id, reason, payload FROM quarantine ORDER BY id").fetchall()
        assert [r[2] for r in rows] == [t.encode() for t in HOSTILE]  # payloads byte for byte
        assert [r[1] for r in rows] == HOSTILE  # reasons too, NUL included: bound, never spliced into SQL
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 2 * len(HOSTILE)


async def test_a_failing_commit_listener_neither_replays_the_batch_nor_stops_the_writer(tmp_path: Path) -> None:
    metrics = Metrics()
    writer = StoreWriter(tmp_path / "g.db", metrics=metrics, outbox=True)
    await writer.open()

    def broken(_: object) -> None:
        raise RuntimeError("listener bug")

    writer.on_commit.append(broken)
    writer.on_outbox.append(broken)
    task = asyncio.create_task(writer.run())
    for i in range(3):
        await writer.put(Reading("AP-01", 1763800000.0 + i, {"pm25": 1.0}, 1763800000.5))
        await asyncio.wait_for(writer.flush(), 10)
    await writer.close()
    await task
    with sqlite3.connect(tmp_path / "g.db") as conn:
        # an exception after COMMIT must not make the writer retry the batch (every reading stored again)
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 3
        assert [s for (s,) in conn.execute("SELECT seq FROM outbox ORDER BY seq")] == [1, 2, 3]
    assert metrics.value("gateway_store_listener_errors_total") == 6


async def test_row_writes_upsert_and_delete_control_rows(tmp_path: Path) -> None:
    from gateway.core.models import RowWrite

    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics())
    await writer.open()
    task = asyncio.create_task(writer.run())
    row = {"command_id": "c'1", "device_id": "AP-01", "action": "setFanSpeed", "value": 3, "source": "api",
           "status": "pending", "attempts": 0, "created_at": 1.5, "state": None, "note": "it's queued"}
    await writer.put(RowWrite("command_log", row))
    await writer.put(RowWrite("command_log", {**row, "status": "acked", "attempts": 1, "state": {"fanSpeed": 3}}))
    await writer.put(RowWrite("desired_layers", {"device_id": "AP-01", "layer": "manual", "power": True,
                                                 "fan_speed": 2, "expires_at": None, "started_at": 1.0,
                                                 "source": "api"}))
    await writer.put(RowWrite("desired_layers", {"device_id": "AP-01", "layer": "manual"}, delete=True))
    await writer.put(RowWrite("no_such_table", {"x": 1}))  # a bug: refused and counted, nothing else lost
    await writer.put(Reading("AP-01", 1763800000.0, {"pm25": 1.0}, 1763800000.5))
    await asyncio.wait_for(writer.flush(), 10)
    await writer.close()
    await task
    with sqlite3.connect(tmp_path / "g.db") as conn:
        assert conn.execute("SELECT command_id, status, attempts, state, note FROM command_log").fetchall() == [
            ("c'1", "acked", 1, '{"fanSpeed":3}', "it's queued")]
        assert conn.execute("SELECT count(*) FROM desired_layers").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 1


async def test_quarantine_keeps_the_head_of_a_huge_payload_with_its_size_and_digest(tmp_path: Path) -> None:
    import hashlib

    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics())
    await writer.open()
    task = asyncio.create_task(writer.run())
    huge = bytes(range(256)) * 400  # 100 KiB of garbage
    await writer.put(Quarantined(1763800000.0, "AP-01", "device/AP-01/data", huge, "too big", "AP-01"))
    await writer.put(Quarantined(1763800000.0, "AP-01", "device/AP-01/data", b"small", "bad", "AP-01"))
    await asyncio.wait_for(writer.flush(), 10)
    await writer.close()
    await task
    with sqlite3.connect(tmp_path / "g.db") as conn:
        rows = conn.execute("SELECT payload, size, sha256 FROM quarantine ORDER BY id").fetchall()
    assert rows[0] == (huge[:4096], len(huge), hashlib.sha256(huge).hexdigest())
    assert rows[1] == (b"small", 5, hashlib.sha256(b"small").hexdigest())


async def test_flush_returns_when_the_last_record_was_refused(tmp_path: Path) -> None:
    from gateway.core.models import RowWrite

    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics())
    await writer.open()
    task = asyncio.create_task(writer.run())
    await writer.put(RowWrite("schedules", {"id": 1}))  # NOT NULL columns missing: refused by SQLite
    # the waiter is woken by the failed commit too, not only by a later successful one (else this hangs)
    await asyncio.wait_for(writer.flush(), 5)
    await writer.close()
    await task


async def test_idle_linger_groups_a_trickle_into_one_commit_and_close_does_not_wait(tmp_path: Path) -> None:
    metrics = Metrics()
    writer = StoreWriter(tmp_path / "g.db", metrics=metrics, idle_linger=0.5)
    await writer.open()
    task = asyncio.create_task(writer.run())
    loop = asyncio.get_running_loop()
    for i in range(3):  # a trickle: 3 readings 50 ms apart after a quiet spell
        await writer.put(Reading("AP-01", 1763800000.0 + i, {"pm25": 1.0}, 1763800000.5))
        await asyncio.sleep(0.05)
    await asyncio.wait_for(writer.flush(), 5)
    assert metrics.value("gateway_store_commits_total") == 1
    await writer.put(Reading("AP-01", 1763800009.0, {"pm25": 1.0}, 1763800009.5))
    started = loop.time()
    await writer.close()  # a lingering record is committed at once, not after the linger
    await task
    assert loop.time() - started < 0.4
    with sqlite3.connect(tmp_path / "g.db") as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 4


async def test_an_urgent_flush_right_after_a_put_skips_the_batching_wait(tmp_path: Path) -> None:
    from gateway.core.models import OutboxDone

    # The uplink deletes acknowledged rows with put() then flush(urgent=True), usually before the writer
    # has woken up. The writer must not begin its batching wait then, or every in-flight window of the
    # uplink pays it (drain capped near window / interval).
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics(), outbox=True, commit_interval=2.0)
    await writer.open()
    task = asyncio.create_task(writer.run())
    loop = asyncio.get_running_loop()
    try:
        await writer.put(Reading("AP-01", 1763800000.0, {"pm25": 1.0}, 1763800000.5))
        await writer.flush()  # after a quiet spell: at once
        for seq in (1, 1):  # the writer is "busy" now: a plain flush would wait its 2 s interval
            t0 = loop.time()
            await writer.put(OutboxDone((seq,)))
            await writer.flush(urgent=True)  # awaited directly, as the uplink does (wait_for's task hid the bug)
            assert loop.time() - t0 < 1.0
        t0 = loop.time()
        await writer.put(Reading("AP-01", 1763800001.0, {"pm25": 1.0}, 1763800001.5))
        await writer.flush()
        assert loop.time() - t0 >= 1.5  # without urgency the batching wait still applies
    finally:
        await writer.close()
        await task


async def test_a_trickle_and_a_batch_store_identical_rows(tmp_path: Path) -> None:
    # A quiet gateway commits each reading with prepared statements; under load a batch goes as one script
    # with JSON literals. Both must store the same thing, hostile strings and late readings included.
    readings = [
        Reading(f"AP-0{i % 2}", 1763800000.0 + (5 - i if i == 4 else i), {"pm25": 1.5 * i, "power": i % 2 == 0},
                1763800000.5 + i, {"note": text} if i % 3 else {})
        for i, text in enumerate(HOSTILE)
    ]

    async def store(name: str, *, one_by_one: bool) -> dict[str, list[tuple[object, ...]]]:
        writer = StoreWriter(tmp_path / name, metrics=Metrics(), outbox=True, commit_interval=0.05)
        await writer.open()
        task = asyncio.create_task(writer.run())
        try:
            for rec in readings:
                await writer.put(rec)
                if one_by_one:
                    await writer.flush()
                    await asyncio.sleep(0.25)  # quiet again: the next one is a trickle too
            await writer.flush()
        finally:
            await writer.close()
            await task
        with sqlite3.connect(tmp_path / name) as conn:
            return {
                "readings": conn.execute("SELECT device_id, ts, received_at, metrics, extra FROM readings").fetchall(),
                "state": conn.execute("SELECT * FROM device_state ORDER BY device_id").fetchall(),
                "outbox": conn.execute("SELECT seq, kind, device_id, ts, body, size FROM outbox").fetchall(),
            }

    trickle = await store("trickle.db", one_by_one=True)
    batch = await store("batch.db", one_by_one=False)
    assert trickle == batch
    assert len(trickle["readings"]) == len(HOSTILE)


async def test_a_database_locked_by_another_process_never_freezes_the_event_loop(tmp_path: Path) -> None:
    """A trickle commits on the loop's thread. With the lock held elsewhere (an installer's sqlite3 shell, a
    backup tool), waiting out SQLite's busy timeout there froze the whole daemon for 5 s per attempt."""
    metrics = Metrics()
    writer = StoreWriter(tmp_path / "g.db", metrics=metrics)
    await writer.open()
    task = asyncio.create_task(writer.run())
    await writer.put(Reading("AP-01", 1763800000.0, {"pm25": 1.0}, 1763800000.5))
    await asyncio.wait_for(writer.flush(), 10)
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        loop = asyncio.get_running_loop()
        longest, last = 0.0, loop.time()

        async def ticker() -> None:
            nonlocal longest, last
            while True:
                await asyncio.sleep(0.01)
                now = loop.time()
                longest, last = max(longest, now - last), now

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.3)  # a quiet spell: the next reading is a trickle, committed inline
        await writer.put(Reading("AP-01", 1763800001.0, {"pm25": 2.0}, 1763800001.5))
        await asyncio.sleep(1.0)
        ticking.cancel()
        assert longest < 0.5, f"the event loop stood still for {longest:.1f} s"
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(writer.flush(), 10)  # committed once the lock is gone
    await writer.close()
    await task
    with sqlite3.connect(tmp_path / "g.db") as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 2


async def test_close_gives_up_at_its_deadline_when_the_disk_keeps_refusing(tmp_path: Path) -> None:
    """SIGTERM has a 5 s budget. A store that cannot commit (disk full, locked elsewhere) kept close() retrying
    until systemd's SIGKILL; now it stops at its deadline and says how much it could not store."""
    metrics = Metrics()
    writer = StoreWriter(tmp_path / "g.db", metrics=metrics)
    await writer.open()
    task = asyncio.create_task(writer.run())
    other = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the lock stays held for the whole test
    try:
        await writer.put(Reading("AP-01", 1763800000.0, {"pm25": 1.0}, 1763800000.5))
        waiter = writer.receipt()
        assert waiter is not None
        await asyncio.sleep(0.3)  # the writer is in a statement (waiting out the busy timeout) or its back-off
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(writer.close(timeout=1.0), 5)
        assert loop.time() - started < 2.0
        await asyncio.wait_for(task, 1)  # the writer loop ended too, without an error
        assert metrics.value("gateway_store_rows_lost_at_close_total") == 1
        assert isinstance(waiter.exception(), StoreClosedError)  # nobody is left waiting
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_a_put_cancelled_while_the_queue_is_full_leaves_no_phantom_record(tmp_path: Path) -> None:
    """The broker's reader is cancelled in put() when its device is taken over while the store is full. The
    record was counted before it was queued: every later receipt (so every QoS 1 PUBACK) waited for it."""
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics(), queue_size=10)
    await writer.open()
    for i in range(10):
        await writer.put(Reading("AP-01", 1763800000.0 + i, {"pm25": 1.0}, 1763800000.5))
    blocked = asyncio.create_task(writer.put(Reading("AP-01", 1763800099.0, {"pm25": 1.0}, 1763800000.5)))
    await asyncio.sleep(0.05)
    assert not blocked.done()  # waiting for room
    blocked.cancel()
    await asyncio.gather(blocked, return_exceptions=True)
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(writer.flush(), 5)  # must not wait for the cancelled record
    await writer.close()
    await task
    with sqlite3.connect(tmp_path / "g.db") as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 10


def _reading(i: int) -> Reading:
    return Reading("AP-01", 1763800000.0 + i, {"pm25": 1.0}, 1763800000.5)


async def test_receipts_for_one_batch_share_a_future_done_with_that_commit(tmp_path: Path) -> None:
    """One receipt per commit, not per message: never done before its records are committed, nor held
    back by records the batch cannot take (a first version shared one future across batches)."""
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics(), max_batch=3, queue_size=10)
    await writer.open()
    receipts = []
    for i in range(5):
        await writer.put(_reading(i))
        receipts.append(writer.receipt())
    first, second = receipts[0], receipts[3]
    assert first is not None and second is not None
    assert all(r is first for r in receipts[:3])  # the next batch takes three
    assert second is not first and receipts[4] is not first  # beyond it: not held back by, nor holding, those
    done_at: dict[str, int] = {}
    first.add_done_callback(lambda _: done_at.setdefault("first", writer.committed))
    second.add_done_callback(lambda _: done_at.setdefault("second", writer.committed))
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(asyncio.shield(second), 5)
    assert done_at == {"first": 3, "second": 5}  # each with its own batch's commit
    assert receipts[4] is not None and receipts[4].done()
    await writer.put(_reading(9))
    later = writer.receipt()
    assert later is not None and later is not second  # asked for after a take: a new group
    await asyncio.wait_for(asyncio.shield(later), 5)
    await writer.close()
    await task


async def test_a_cancelled_flush_does_not_cancel_the_receipt_it_shares(tmp_path: Path) -> None:
    """The broker holds the same receipt for its QoS 1 PUBACKs: cancelled, those devices would wait forever."""
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics())
    await writer.open()
    await writer.put(_reading(0))
    shared = writer.receipt()
    assert shared is not None
    flusher = asyncio.create_task(writer.flush())
    await asyncio.sleep(0)
    flusher.cancel()
    await asyncio.gather(flusher, return_exceptions=True)
    assert not shared.cancelled()
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(asyncio.shield(shared), 5)
    await writer.close()
    await task
