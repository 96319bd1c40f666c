"""Cancellation that Python 3.11 can lose inside aiomqtt, and how the uplink keeps it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def honour_cancel(call: Awaitable[T]) -> T:
    """Await an aiomqtt call in a lane task, then end the task if it was cancelled meanwhile.

    aiomqtt waits for a PUBACK/SUBACK with asyncio.wait_for, which on Python 3.11 swallows a cancellation that
    lands as the acknowledgement arrives. A lane that goes on to wait for its next event then never ends: the
    TaskGroup (and the gateway's stop) waited on it for good. The task still counts the cancellation.
    """
    result = await call
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result
