"""QoS 1 PUBACKs after storage: in arrival order, one store callback per shared receipt."""

from __future__ import annotations

import asyncio
import gc

from gateway.broker.amqtt.publish_flow import StoredAcks
from gateway.core.errors import StoreClosedError


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def _pubacks(*ids: int) -> bytes:
    return b"".join(b"\x40\x02" + i.to_bytes(2, "big") for i in ids)


async def test_pubacks_follow_arrival_order_across_shared_receipts() -> None:
    loop = asyncio.get_running_loop()
    transport = _Transport()
    acks = StoredAcks(transport)
    first, second = loop.create_future(), loop.create_future()
    entries = [acks.expect(i) for i in (1, 2, 3, 4, 5)]
    acks.settle(entries[0], first)
    acks.settle(entries[1], first)
    acks.settle(entries[2], second)
    acks.settle(entries[3], second)  # entries[4] is still being delivered
    assert len(first._callbacks) == 1 and len(second._callbacks) == 1  # type: ignore[attr-defined]
    second.set_result(None)
    await asyncio.sleep(0)
    assert transport.written == []  # 3 and 4 are stored, but 1 and 2 come first
    first.set_result(None)
    await asyncio.sleep(0)
    assert transport.written == [_pubacks(1, 2, 3, 4)]  # one write for all that became ready together
    acks.settle(entries[4], None)  # nothing to store (e.g. refused by the ACL): at once, in its turn
    assert transport.written[-1] == _pubacks(5)


async def test_a_failed_receipt_holds_its_puback_and_every_later_one() -> None:
    loop = asyncio.get_running_loop()
    transport = _Transport()
    acks = StoredAcks(transport)
    failed = loop.create_future()
    first, second = acks.expect(1), acks.expect(2)
    acks.settle(first, failed)
    acks.settle(second, None)
    failed.set_exception(RuntimeError("store closed"))
    await asyncio.sleep(0)
    assert transport.written == []  # the device keeps both and sends them again on its next connection


async def test_a_refused_message_behind_others_leaves_no_unretrieved_error_to_report() -> None:
    """At shutdown ingest refuses messages with a failed receipt; one behind a PUBACK still waiting was never
    looked at, and asyncio logged "Future exception was never retrieved" for each when it was collected."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        acks = StoredAcks(_Transport())
        waiting, refused, closed = loop.create_future(), loop.create_future(), loop.create_future()
        refused.set_exception(StoreClosedError("store is closed"))
        acks.settle(acks.expect(1), waiting)
        acks.settle(acks.expect(2), refused)
        acks.settle(acks.expect(3), closed)
        closed.set_exception(StoreClosedError("store closed before this was committed"))
        await asyncio.sleep(0)
        del acks, waiting, refused, closed
        gc.collect()
        assert reported == []
    finally:
        loop.set_exception_handler(None)
