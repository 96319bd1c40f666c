"""Smaller asyncio Queues and Events for the broker's per-connection objects.

An asyncio Event keeps its waiters in a `collections.deque`, and a Queue keeps three (getters, putters,
and its `join()` Event's waiters) beside the deque of its items. CPython allocates a deque's first
64-slot block when the deque is created, so an idle Event costs ~860 bytes and an idle Queue ~3.3 KB
(measured with tracemalloc). amqtt 0.12 gives every connection four Queues and three Events that
almost never have a waiter: ~12 KB per connection, 1.2 MB for 100 purifiers, on a board where the
whole daemon should stay under 60 MB.

`slim_event` and `slim_queue` swap those *waiter* deques for an empty list with the one deque method
asyncio calls on them (`popleft`); an empty list allocates nothing beyond its header. Waiter lists
hold zero or one future here, so `pop(0)` costs nothing. A queue's items stay in their deque unless
the caller says it only ever holds a few: a queue that fills (a QoS 2 flood into amqtt's delivery
queue) still pops in O(1).

Relies on the waiter attributes of asyncio's Queue and Event (`_getters`, `_putters`, `_finished`,
`_waiters`, and `_queue` for the items), the same from Python 3.11 to 3.13 and checked at start
(compat.py); tests/unit/test_slim_waits.py runs the Queue and Event APIs on slimmed objects. A waiter
list that is not empty is left alone, so slimming an object in use never drops a waiter.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

Q = TypeVar("Q", bound=asyncio.Queue)  # type: ignore[type-arg]


class _Waiters(list):  # type: ignore[type-arg]
    """A waiter list: what asyncio's Queue and Event use of a deque (append, remove, popleft, iterate)."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def _slim(owner: Any, name: str) -> None:
    waiters = getattr(owner, name)
    if not waiters and not isinstance(waiters, _Waiters):
        setattr(owner, name, _Waiters())


def slim_event(event: asyncio.Event) -> asyncio.Event:
    """`event`, its waiter deque replaced by an empty list (if nothing waits on it)."""
    _slim(event, "_waiters")
    return event


def slim_queue(queue: Q, *, items: bool = False) -> Q:
    """`queue`, its getter, putter and join() waiter deques replaced by empty lists (those that are empty).

    `items`: its item deque too, for a queue that never holds more than a few items.
    """
    if items:
        _slim(queue, "_queue")
    _slim(queue, "_getters")
    _slim(queue, "_putters")
    slim_event(queue._finished)  # type: ignore[attr-defined]
    return queue


def new_event() -> asyncio.Event:
    return slim_event(asyncio.Event())
