"""Commit receipts (gateway/store/receipts.py): shared by the records one batch takes, never by more."""

from __future__ import annotations

import asyncio

from gateway.store.receipts import Receipts


async def test_a_receipt_is_done_with_the_batch_its_record_is_in_also_when_batches_are_paced_small() -> None:
    receipts = Receipts(max_batch=250)
    receipts.next_batch = 8  # the writer is paced by the cloud link: batches of 8
    futures = []
    for _ in range(20):
        receipts.enqueued += 1
        fut = receipts.receipt(closed=False)
        assert fut is not None
        futures.append(fut)
    receipts.note_take(8)
    receipts.note_committed(8)
    await asyncio.sleep(0)
    assert all(f.done() for f in futures[:8])  # the first batch's devices get their PUBACKs now
    assert not any(f.done() for f in futures[8:])
    receipts.note_take(8)
    receipts.note_committed(8)
    receipts.note_take(4)
    receipts.note_committed(4)
    assert all(f.done() for f in futures)


async def test_receipts_for_one_batch_share_one_future() -> None:
    receipts = Receipts(max_batch=250)
    futures = set()
    for _ in range(100):
        receipts.enqueued += 1
        futures.add(receipts.receipt(closed=False))
    assert len(futures) == 1
