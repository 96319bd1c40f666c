"""Command attempts on their way to devices: one at a time per device, never holding up the control loop.

Handing an attempt to a link may take a while: a Modbus write waits for the slave's reply and its
read-back (up to (retries + 1) x timeout when the slave is gone), a BLE GATT write for the radio. The
control loop must not wait for it, or one dead slave would delay every other device's commands, audit
rows and schedule boundaries. So each attempt runs as its own task, chained per device (an attempt
starts when the device's previous one has ended: a device sees its commands in the order they were
decided), and the loop goes on. The number of tasks is bounded by the devices with a command in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from gateway.control.command_model import Send

log = structlog.get_logger(__name__)

Attempt = Callable[[Send], Awaitable[None]]


class DeviceSends:
    def __init__(self, attempt: Attempt) -> None:
        self._attempt = attempt  # hands one attempt to the link and takes its reply; never raises
        self._last: dict[str, asyncio.Task[None]] = {}  # device -> its newest attempt's task
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, send: Send) -> None:
        device = send.command.device_id
        before = self._last.get(device)
        task = asyncio.create_task(self._after(before, send), name=f"command-send:{device}")
        self._last[device] = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._ended(done, device))

    async def _after(self, before: asyncio.Task[None] | None, send: Send) -> None:
        if before is not None and not before.done():
            await asyncio.wait([before])  # its end, whatever it was; a cancel of this task is not passed on
        try:
            await self._attempt(send)
        except Exception:  # the attempt function takes the link's errors itself: this is a bug, kept visible
            log.exception("command.send_failed", command_id=send.command_id, device_id=send.command.device_id)

    def _ended(self, task: asyncio.Task[None], device: str) -> None:
        self._tasks.discard(task)
        if self._last.get(device) is task:
            del self._last[device]

    def __len__(self) -> int:
        """Attempts started and not yet ended."""
        return len(self._tasks)

    async def idle_for(self, device: str) -> None:
        """Wait until the device's attempts started so far have ended."""
        last = self._last.get(device)
        if last is not None:
            await asyncio.wait([last])

    async def idle(self) -> None:
        """Wait until every attempt started so far has ended."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def cancel(self) -> None:
        """At shutdown: attempts still running are abandoned (the executor retries after a restart)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
