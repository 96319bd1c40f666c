"""The single writer of the database: group commit behind a bounded queue.

Principle 1 of DESIGN.md: a reading is accepted once committed. Producers `await put()`; when the
queue is full they wait (back-pressure on the device that sent it), nothing is dropped. The writer
takes everything waiting (up to max_batch), after at most `commit_interval` seconds since the first
row arrived, and commits it in one transaction: planned by planner.py from the record kinds'
planning functions (record_kinds.py), run by transaction.py, on the loop's thread for a trickle and on
the connection's worker thread otherwise. A refused commit is retried with back-off; receipts
(receipts.py) tell producers when their records are committed. The uplink's deletes skip the queue
(`put_first`, first_lane.py): the cloud link's pace must not depend on how much devices have queued.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from gateway.core.clock import Clock, SystemClock
from gateway.core.errors import StoreClosedError
from gateway.core.metrics import Metrics
from gateway.core.models import OutboxEntry, StoreRecord
from gateway.store import aiosqlite_access, transaction
from gateway.store.first_lane import FirstLane
from gateway.store.planner import JobContext, plan_batch
from gateway.store.receipts import Receipts
from gateway.store.record_kinds import RECORD_PLANNERS
from gateway.store.sqlite_errors import is_locked, is_transient
from gateway.store.writer_open import open_for_writing
from gateway.store.writer_queue import STOP, Marker, WriterQueue

log = structlog.get_logger(__name__)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Abandoned(Exception):
    """close() ran out of time while the disk kept refusing: the writer loop ends, uncommitted."""


INLINE_COMMIT_MAX = 16  # batches up to this many records commit on the loop's thread


class StoreWriter:
    """Owns the one writing connection. Start with `open()`, run `run()` as a task, end with `close()`."""

    def __init__(
        self,
        db_path: Path,
        *,
        metrics: Metrics,
        commit_interval: float = 0.005,
        max_batch: int = 1000,
        queue_size: int = 10_000,
        synchronous: str = "NORMAL",
        outbox: bool = False,
        clock: Clock | None = None,
        idle_linger: float = 0.0,
        wal_autocheckpoint: int = 1000,
    ) -> None:
        self._db_path = db_path
        self._outbox = outbox  # also queue readings and events for the cloud (uplink enabled)
        self._clock = clock or SystemClock()
        self._next_seq = 1
        self._metrics = metrics
        self._interval = commit_interval
        self._linger = idle_linger
        self._wal_autocheckpoint = wal_autocheckpoint  # pages; SQLite's default (a checkpointer may take it over)
        self._quiet = False
        self._max_batch = max_batch
        self._queue = WriterQueue(queue_size)
        self._first = FirstLane()
        self._synchronous = synchronous
        self._conn: aiosqlite.Connection | None = None
        self._max_params = 999  # parameters per statement: SQLite's limit, read in open()
        self._closed = False
        self._stopped = asyncio.Event()
        self._receipts = Receipts(max_batch)
        self._batch_wait: asyncio.Future[None] | None = None
        self._urgent = False  # a flush(urgent=True) is waiting: the next batch commits without pausing
        self._retry_wait: asyncio.Future[None] | None = None  # a back-off pause after a refused commit
        self._abandoned = False  # close() ran out of time
        # Called after each commit with the records it made durable (live feeds, uplink wake-ups).
        self.on_commit: list[Callable[[Sequence[StoreRecord]], None]] = []
        # Called after each commit with the outbox rows it created (the uplink's live lane).
        self.on_outbox: list[Callable[[Sequence[OutboxEntry]], None]] = []
        metrics.gauge_callback("gateway_store_queue_depth", self._queue.qsize, "rows waiting for the writer")

    @property
    def committed(self) -> int:
        return self._receipts.committed

    @property
    def last_seq(self) -> int:
        """The last outbox seq committed or being committed (msgIds up to it exist or existed)."""
        return self._next_seq - 1

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def open(self) -> aiosqlite.Connection:
        opened = await open_for_writing(self._db_path, self._synchronous, self._wal_autocheckpoint)
        self._conn, self._next_seq, self._max_params = opened.conn, opened.next_seq, opened.max_params
        return self._conn

    async def put(self, record: StoreRecord) -> None:
        """Queue a record for the next commit; waits while the queue is full."""
        if self._closed:
            raise StoreClosedError("store is closed")
        await self._queue.put(record)
        # Counted once queued (in the same step: the writer cannot have taken it yet). Counted before the
        # wait, a put cancelled while the queue was full left a record every receipt waited for in vain.
        self._receipts.enqueued += 1

    async def flush(self, *, urgent: bool = False) -> None:
        """Wait until everything queued before this call is committed.

        `urgent` cuts the writer's batching wait short, for a caller whose pace is one commit per call.
        """
        fut = self.receipt()
        if fut is None:
            return
        if urgent:
            # Sticky until the writer takes its next batch: the caller usually flushes right after its
            # put(), before the writer has even woken up, so cutting only a wait already begun missed most.
            self._urgent = True
            if self._batch_wait is not None and not self._batch_wait.done():
                self._batch_wait.set_result(None)
        await asyncio.shield(fut)  # shared with other receipts: a cancelled caller must not cancel it for them

    async def put_first(self, record: StoreRecord, *, rows: int = 0) -> None:
        """Commit `record` ahead of everything queued, in the writer's next transaction; returns once it is.

        For the uplink's deletes (first_lane.py): never waits for room in the queue nor for queued records.
        `rows`: the device records it stands for (readings the cloud took), the queue's pace under overload.
        """
        if self._closed:
            raise StoreClosedError("store is closed")
        done = self._first.add(record, rows)
        if self._batch_wait is not None and not self._batch_wait.done():
            self._batch_wait.set_result(None)  # the batch being gathered commits after it, now
        else:
            self._queue.wake()
        await asyncio.shield(done)  # shared with the lane's other records

    def receipt(self) -> asyncio.Future[None] | None:
        """A future done once everything queued so far is committed; None if it already is.

        The broker acknowledges a device's QoS 1 message only when this is done, so a crash or power cut
        never loses a reading the device was told is safe. It fails with StoreClosedError if the store
        closes first. Do not cancel it (await it through asyncio.shield): it is shared by the receipts
        of the records the next batch takes (receipts.py).
        """
        return self._receipts.receipt(closed=self._closed and self._stopped.is_set())

    async def run(self) -> None:
        """The writer loop; returns after close() once the queue is drained."""
        queue = self._queue
        loop = asyncio.get_running_loop()
        last_commit = -1e9
        try:
            await self._no_lock_waits()
            while True:
                while self._first:  # (more may come while it commits)
                    await self._commit_first()
                first = await queue.get()
                if isinstance(first, Marker):
                    if first is STOP:
                        return
                    continue  # woken for the first lane
                batch: list[StoreRecord] = [first]
                busy = loop.time() - last_commit < 4 * self._interval
                # Under steady load, wait a bounded moment so one transaction carries many rows. After a
                # quiet spell, commit at once (the wait would batch nothing and cost a timer wake-up; on
                # small boards wake-ups are what idle CPU is made of), unless told to linger.
                self._quiet = not busy  # only a trickle commits on the loop's thread (see _commit)
                pause = self._interval if busy else self._linger
                # Ahead of the cloud link by a batch: wait for its next delete (cut short by it; first_lane.py).
                behind = self._first.behind(self._max_batch, loop.time())
                if behind:
                    pause = self._interval
                if (pause > 0 and (behind or queue.qsize() < self._max_batch) and not self._first
                        and not self._closed and not self._urgent):  # (a delete that came as it woke: no wait)
                    wait = self._batch_wait = loop.create_future()
                    timer = loop.call_later(pause, _resolve, wait)
                    try:
                        await wait
                    finally:
                        timer.cancel()
                        self._batch_wait = None
                while self._first:  # arrived during the wait: it does not wait for this batch's commit
                    await self._commit_first()
                self._urgent = False  # what an urgent flush waits for is queued: it is in this batch
                limit = self._first.batch_limit(self._max_batch, loop.time())  # paced by the cloud link's deletes
                stop = queue.take(batch, limit)
                self._receipts.note_take(len(batch))
                self._receipts.next_batch = limit  # receipts shared up to what the next batch likely takes
                await self._commit_retrying(batch)
                last_commit = loop.time()
                if stop:
                    return
        except _Abandoned:
            return  # close() ran out of time and counted what is left
        finally:
            self._stopped.set()

    async def _no_lock_waits(self) -> None:
        """From here on (start-up reads may still wait) the writer never waits inside SQLite for a lock
        another process holds (an installer's sqlite3 shell, a backup tool): a trickle commits on the event
        loop's thread, where waiting out the busy timeout froze the whole daemon for 5 s per attempt, and
        close() must be able to stop at its deadline. A refused commit is retried with a back-off instead
        (_commit_retrying)."""
        if self._conn is not None:
            await self._conn.execute("PRAGMA busy_timeout=0")

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting, commit what is queued, close the connection.

        `timeout` bounds the whole close (the daemon has a shutdown budget): if the disk keeps refusing
        (full, locked by another process), the writer gives up then, and the records not committed are
        counted and logged. QoS 1 readings among them were never acknowledged, so their devices send
        them again; a close that waited forever would lose them all the same at systemd's SIGKILL.
        """
        if self._closed:
            return
        self._closed = True
        if self._batch_wait is not None and not self._batch_wait.done():
            self._batch_wait.set_result(None)  # no lingering on the way out
        try:
            async with asyncio.timeout(timeout):
                await self._queue.put(STOP)
                await self._stopped.wait()
                rest = self._queue.rest()
                self._receipts.note_take(len(rest))
                while self._first:
                    await self._commit_first()
                if rest:
                    await self._commit_retrying(rest)
        except (TimeoutError, _Abandoned):
            await self._abandon(timeout)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
        self._receipts.fail_all()  # nothing more will be committed: do not leave anyone waiting
        self._first.fail()
        log.info("store.closed", committed=self._receipts.committed)

    async def _abandon(self, timeout: float | None) -> None:
        """Close ran out of time: stop the writer loop where it is (a statement, a back-off pause)."""
        self._abandoned = True
        lost = self._receipts.enqueued - self._receipts.committed
        self._metrics.inc("gateway_store_rows_lost_at_close_total", lost, "records not committed by the shutdown "
                          "deadline (the disk kept refusing)")
        log.error("store.close_gave_up", uncommitted=lost, timeout_s=timeout)
        if self._retry_wait is not None and not self._retry_wait.done():
            self._retry_wait.set_result(None)
        if self._conn is not None:
            # thread-safe: ends a statement still running (a slow disk)
            aiosqlite_access.raw_connection(self._conn).interrupt()
        await self._stopped.wait()

    async def _commit_first(self) -> None:
        """The first lane's records, in a transaction of their own (not counted by the queue's receipts)."""
        await self._commit_retrying(self._first.take(), receipted=False)
        self._first.committed(asyncio.get_running_loop().time())

    async def _commit_retrying(self, batch: list[StoreRecord], *, receipted: bool = True) -> None:
        """Commit a batch; never drop accepted rows because the disk said no for a while.

        A transient refusal (locked, busy, full, I/O) keeps the batch and retries with back-off. Any
        other error means some record cannot be stored as it is: the records are then committed one
        by one, so one bad record cannot hold up everyone else's; the ones refused are logged,
        counted and skipped.
        """
        delay = 0.1
        failing = False
        while True:
            try:
                created = await self._commit(batch)
            except (sqlite3.Error, ValueError) as exc:  # ValueError: a record that cannot be stored as it is
                if self._abandoned:  # close() gave up (an interrupted statement lands here too)
                    raise _Abandoned from exc
                if not isinstance(exc, sqlite3.Error) or not is_transient(exc):
                    await self._commit_one_by_one(batch, receipted)
                    return
                if not failing:
                    log.error("store.commit_failed", error=str(exc), rows=len(batch))
                    failing = True
                self._metrics.inc("gateway_store_commit_errors_total", 1, "failed transactions (retried)")
                loop = asyncio.get_running_loop()
                pause = self._retry_wait = loop.create_future()
                timer = loop.call_later(delay, _resolve, pause)
                try:
                    await pause  # cut short by close() when it gives up
                finally:
                    timer.cancel()
                    self._retry_wait = None
                if self._abandoned:
                    raise _Abandoned from exc
                # A lock is usually someone's short transaction: retry it soon. A full or failing disk: slower.
                delay = min(delay * 2, 1.0 if is_locked(exc) else 5.0)
                continue
            if receipted:
                self._receipts.note_committed(len(batch))
                self._first.created(created)
            if failing:
                log.info("store.commit_recovered", rows=len(batch))
            return

    async def _commit_one_by_one(self, batch: list[StoreRecord], receipted: bool) -> None:
        for rec in batch:
            try:
                await self._commit([rec])
            except (sqlite3.Error, ValueError) as exc:
                if isinstance(exc, sqlite3.Error) and is_transient(exc):
                    await self._commit_retrying([rec], receipted=receipted)
                    continue
                self._metrics.inc("gateway_store_rows_refused_total", 1, "records the database refused")
                log.error("store.record_refused", error=str(exc), record=repr(rec)[:500])
            # Committed, or handled: a refused record will not be retried, and a flush() waiting for it must not
            # wait for the next commit.
            if receipted:
                self._receipts.note_committed(1)

    def _notify(self, callback: Callable[[Any], None], records: Sequence[Any]) -> None:
        try:
            callback(records)
        except Exception:
            self._metrics.inc("gateway_store_listener_errors_total", 1, "commit listeners that raised")
            log.exception("store.listener_failed", listener=getattr(callback, "__qualname__", repr(callback)))

    async def _commit(self, batch: list[StoreRecord]) -> int:
        """One transaction for the batch, then its jobs (outbox budget) and listeners (the caller notes receipts).
        Returns how many outbox rows it created."""
        conn = self._conn
        if conn is None:
            raise StoreClosedError("store is not open")
        plan = plan_batch(batch, RECORD_PLANNERS, next_seq=self._next_seq, now=self._clock.now(),
                          outbox_on=self._outbox)
        steps = plan.steps()
        if steps:
            # A trickle (after a quiet spell, a few records) commits on the loop's thread: SQLite here beats
            # ~0.5 ms of CPU handing it to the worker thread and back (two thread wake-ups per reading were
            # most of a quiet gateway's CPU). Never under load: commits on the loop's thread would shrink the
            # batches and starve the broker.
            if self._quiet and len(batch) <= INLINE_COMMIT_MAX:
                transaction.run(aiosqlite_access.raw_connection(conn), transaction.per_row(steps))
            else:
                # The whole batch in one hand-off to the worker thread.
                statements = transaction.bulk(steps, self._max_params)
                await aiosqlite_access.on_worker_thread(
                    conn, transaction.run, aiosqlite_access.raw_connection(conn), statements
                )
        self._next_seq = plan.next_seq
        # The batch is durable from here on: nothing below may make the caller think it failed (a retry
        # would store every row a second time), so jobs' and listeners' errors are contained and counted.
        if plan.jobs:  # each in its own transaction
            context = JobContext(self._metrics, self._take_seq if self._outbox else None)
            for job in plan.jobs:
                try:
                    await job(conn, context)
                except Exception:
                    self._metrics.inc("gateway_store_job_errors_total", 1, "jobs after a commit that raised")
                    log.exception("store.job_failed", job=type(job).__name__)
                    if conn.in_transaction:  # the next batch must not start inside what the job left open
                        await conn.execute("ROLLBACK")
        if plan.outbox:
            for outbox_callback in self.on_outbox:
                self._notify(outbox_callback, plan.outbox)
        if plan.readings:
            self._metrics.inc("gateway_readings_committed_total", plan.readings, "readings made durable")
        self._metrics.inc("gateway_store_commits_total", 1, "transactions committed")
        for callback in self.on_commit:
            self._notify(callback, batch)
        return len(plan.outbox)

    def _take_seq(self) -> int:
        """An outbox seq for a row a job inserts."""
        seq = self._next_seq
        self._next_seq = seq + 1
        return seq
