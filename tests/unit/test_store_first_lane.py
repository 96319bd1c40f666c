"""The store writer's first lane (the uplink's deletes): ahead of a full queue, never counted by its receipts."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.core.errors import StoreClosedError
from gateway.core.metrics import Metrics
from gateway.core.models import OutboxDone, Reading, RowWrite, StoreRecord
from gateway.store.first_lane import PACE_FLOOR, PACE_WINDOW_S, FirstLane
from gateway.store.writer import StoreWriter


def _reading(i: int) -> Reading:
    return Reading("AP-01", 1763800000.0 + i, {"pm25": 1.0}, 1763800000.5)


def _outbox_seqs(db: Path) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [s for (s,) in conn.execute("SELECT seq FROM outbox ORDER BY seq")]


async def test_a_delete_commits_ahead_of_a_full_queue_and_its_waiting_producers(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics(), outbox=True, queue_size=10, max_batch=4)
    await writer.open()
    commits: list[list[StoreRecord]] = []
    writer.on_commit.append(lambda batch: commits.append(list(batch)))
    task = asyncio.create_task(writer.run())
    await writer.put(_reading(0))  # outbox seq 1
    await asyncio.wait_for(writer.flush(), 5)
    # The writer now stands still: the queue fills (what 100 devices' windows do) and a producer waits for room.
    gate = asyncio.Event()
    held = writer._commit

    async def held_commit(batch: list[StoreRecord]) -> int:
        await gate.wait()
        return await held(batch)

    writer._commit = held_commit  # type: ignore[method-assign]
    count = 1
    while True:  # until a producer waits: the writer holds a batch and its queue is full behind it
        put = asyncio.create_task(writer.put(_reading(count)))
        count += 1
        await asyncio.sleep(0.01)
        if not put.done():
            break
    assert writer.queue_depth == 10
    delete = asyncio.create_task(writer.put_first(OutboxDone((1,))))
    await asyncio.sleep(0.05)
    assert not put.done() and not delete.done()
    before = len(commits)
    gate.set()  # the batch the writer had taken commits; the delete is the very next transaction
    await asyncio.wait_for(delete, 5)
    # The held batch (at most max_batch), then the delete as its own transaction: ahead of the waiting producer
    # and every queued reading. (The writer may commit its next batch before this task resumes: count from here.)
    held_batch, delete_commit = commits[before], commits[before + 1]
    assert len(held_batch) <= 4 and OutboxDone not in {type(r) for r in held_batch}
    assert [type(r) for r in delete_commit] == [OutboxDone]
    await asyncio.wait_for(put, 5)
    await asyncio.wait_for(writer.flush(), 5)  # the queue's receipts still count queued readings only
    assert writer.committed == count
    await writer.close()
    await task
    assert _outbox_seqs(tmp_path / "g.db") == list(range(2, count + 1))


async def test_a_writer_idle_on_an_empty_queue_wakes_for_the_first_lane(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics(), outbox=True, commit_interval=30.0)
    await writer.open()
    task = asyncio.create_task(writer.run())
    for i in range(2):
        await writer.put(_reading(i))
        await asyncio.wait_for(writer.flush(urgent=True), 5)
    await asyncio.sleep(0.01)  # the writer waits on its empty queue now
    await asyncio.wait_for(writer.put_first(OutboxDone((1,))), 5)  # hung without the wake-up
    assert _outbox_seqs(tmp_path / "g.db") == [2]
    # The writer is "busy" (it just committed): a reading put now waits in the 30 s batching wait, and a
    # delete arriving meanwhile cuts it short instead of waiting behind it.
    await writer.put(_reading(2))
    await asyncio.sleep(0.01)
    await asyncio.wait_for(writer.put_first(OutboxDone((2,))), 5)
    await asyncio.wait_for(writer.flush(), 5)
    await writer.close()
    await task
    assert _outbox_seqs(tmp_path / "g.db") == [3]


async def test_a_delete_arriving_as_the_writer_wakes_for_a_reading_does_not_wait_for_its_linger(
    tmp_path: Path,
) -> None:
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics(), outbox=True, commit_interval=30.0, idle_linger=30.0)
    await writer.open()
    task = asyncio.create_task(writer.run())
    await writer.put(_reading(0))
    await asyncio.wait_for(writer.flush(urgent=True), 5)
    await asyncio.sleep(0.01)  # the writer waits on its empty queue now

    async def reading_then_delete() -> None:
        # In one step: the reading wakes the writer, and the delete comes before the writer has resumed (and
        # before it begins the 30 s linger that the delete would otherwise have to cut short).
        await writer.put(_reading(1))
        await writer.put_first(OutboxDone((1,)))

    await asyncio.wait_for(reading_then_delete(), 5)  # waited out the linger without the check
    assert 1 not in _outbox_seqs(tmp_path / "g.db")  # committed (and the reading's batch does not linger)
    await writer.close()
    await task
    assert _outbox_seqs(tmp_path / "g.db") == [2]


async def test_close_commits_the_first_lane_and_refuses_it_afterwards(tmp_path: Path) -> None:
    writer = StoreWriter(tmp_path / "g.db", metrics=Metrics(), outbox=True)
    await writer.open()
    await writer.put(_reading(0))
    task = asyncio.create_task(writer.run())
    await asyncio.wait_for(writer.flush(), 5)
    await writer.put(_reading(1))
    delete = asyncio.create_task(writer.put_first(OutboxDone((1,))))
    await asyncio.sleep(0)
    await writer.close()
    await task
    await asyncio.wait_for(delete, 1)
    assert _outbox_seqs(tmp_path / "g.db") == [2]
    with pytest.raises(StoreClosedError):
        await writer.put_first(OutboxDone((2,)))


async def test_a_refused_first_lane_record_neither_hangs_its_caller_nor_counts_as_queued(tmp_path: Path) -> None:
    metrics = Metrics()
    writer = StoreWriter(tmp_path / "g.db", metrics=metrics, outbox=True)
    await writer.open()
    task = asyncio.create_task(writer.run())
    await writer.put(_reading(0))
    await asyncio.wait_for(writer.flush(), 5)
    await asyncio.wait_for(writer.put_first(RowWrite("no_such_table", {"x": 1})), 5)  # refused, counted
    assert metrics.value("gateway_store_rows_refused_total") == 1
    assert writer.committed == 1  # the queue's count: the lane's records are not in it
    await writer.close()
    await task


async def test_the_pace_bounds_the_stores_lead_over_a_delivering_cloud_link_to_one_batch() -> None:
    lane = FirstLane()
    lane.created(300)  # the cloud link delivers nothing (down): no pace, and what piles up is backlog
    assert lane.batch_limit(250, 0.0) == 250 and not lane.behind(250, 0.0)

    def deleted(rows: int, now: float) -> None:
        lane.add(OutboxDone(tuple(range(rows))), rows)
        lane.take()
        lane.committed(now)

    deleted(20, 1.0)
    lane.created(300)  # the store ran 300 outbox rows ahead of the link
    assert lane.behind(250, 1.1)  # the next batch waits for the link's next delete
    assert lane.batch_limit(250, 1.1) == PACE_FLOOR  # and takes only the floor
    deleted(100, 1.2)
    assert not lane.behind(250, 1.3)
    assert lane.batch_limit(250, 1.3) == 50  # back to one batch ahead
    lane.created(50)
    assert lane.batch_limit(250, 1.2 + PACE_WINDOW_S) == 250  # no delete for a while: the pace lapses
    assert not lane.behind(250, 1.2 + PACE_WINDOW_S)


async def test_rows_added_while_a_delete_commits_count_at_their_own_commit() -> None:
    lane = FirstLane()
    lane.add(OutboxDone(tuple(range(20))), 20)
    lane.take()
    lane.created(300)  # (the lead is counted from the committed batches' outbox rows)
    lane.add(OutboxDone(tuple(range(20, 50))), 30)  # arrives while the first delete commits
    lane.committed(1.0)
    assert lane.batch_limit(1000, 1.1) == 1000 - 280  # only the committed delete's 20 rows are off the lead
    lane.take()
    lane.committed(1.2)
    assert lane.batch_limit(1000, 1.3) == 1000 - 250
