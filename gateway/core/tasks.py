"""Ending tasks when Python 3.11 can lose a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_until_done(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> set[asyncio.Task[Any]]:
    """Cancel the tasks, again each turn while one still runs, until all ended or `timeout` passed; returns
    those still running.

    On Python 3.11, `asyncio.wait_for` (inside every aiomqtt publish, subscribe and connect) returns its result
    instead of raising when a cancel lands in the loop iteration its awaitable completes in (CPython gh-86296,
    fixed in 3.12): cancelled once, a task can go on waiting for good.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {task for task in tasks if not task.done()}
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.05, max(0.0, deadline - loop.time())))
    return pending
