"""The command service: submits commands to the executor, takes acks, performs the executor's effects.

It owns the :class:`~gateway.control.commands.CommandExecutor` (the pure state machine) and what lives
around it: callers waiting for a command to finish, a bounded memory of recent records, the ack path,
devices going offline and coming back, and turning each effect into I/O (the message to the device, the
audit row, the state an ack reported, the ``command.result`` event). Effects are queued on the control
loop and performed there in order; `perform` is what the loop calls for each. Commands leave as domain
commands through the device's link (`send`); a link whose reply is the acknowledgement (a Modbus write)
returns it, and it is taken like an ack that came on its own.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import structlog

from gateway.control.attempts import log_from_json
from gateway.control.command_model import (
    Action,
    Audit,
    CommandRecord,
    CommandRequest,
    CommandStatus,
    Effect,
    Finished,
    Ignored,
    Send,
    Source,
    StateReported,
)
from gateway.control.commands import CommandExecutor
from gateway.control.loop import Enqueue, Item
from gateway.control.sends import DeviceSends
from gateway.core.clock import Clock
from gateway.core.device_commands import Ack, OutgoingCommand, acked_state, device_command
from gateway.core.errors import NotFoundError
from gateway.core.links import LinkError
from gateway.core.metrics import Metrics
from gateway.core.models import DeviceEvent, StoreRecord
from gateway.store import control_repo
from gateway.store.control_repo import UnfinishedCommand

log = structlog.get_logger(__name__)

Put = Callable[[StoreRecord], Awaitable[None]]
# Hands one attempt of a command to the device's link (gateway.core.links.DeviceLinks.send).
SendFn = Callable[[OutgoingCommand], Awaitable[Ack | None]]
# Lays an ack's state over the device's latest metrics; returns the merged metrics to persist.
StateSink = Callable[[str, Mapping[str, Any], float], dict[str, Any]]

_REMEMBER_RECORDS = 2048


class CommandService:
    def __init__(
        self,
        executor: CommandExecutor,
        *,
        clock: Clock,
        queue: Enqueue,
        put: Put,
        send: SendFn,
        state_reported: StateSink,
        metrics: Metrics,
        finished: Callable[[CommandRecord], None],
    ) -> None:
        self.executor = executor
        self._clock = clock
        self._enqueue = queue
        self._put = put
        self._send = send
        self._state_reported = state_reported
        self._metrics = metrics
        self._on_finished = finished  # after waiters are resolved: the reconciler's turn
        self._waiters: dict[str, list[asyncio.Future[CommandRecord]]] = {}
        self._records: OrderedDict[str, CommandRecord] = OrderedDict()  # recent records, for waiters and pages
        # device -> Finished effects queued and not yet performed: its command is over in the executor, but
        # nobody (waiters, the reconciler) has been told yet, so the device still counts as busy.
        self._finishing: dict[str, int] = {}
        self.sends = DeviceSends(self._attempt)

    # --------------------------------------------------------------------------------------- queries

    def record(self, command_id: str) -> CommandRecord | None:
        return self.executor.get(command_id) or self._records.get(command_id)

    def busy(self, device: str) -> bool:
        """A command of the device is in flight, waits in its queue, or has finished without being reported yet."""
        return (self.executor.in_flight(device) is not None or bool(self.executor.pending(device))
                or device in self._finishing)

    def _queue(self, *items: Item) -> None:
        for item in items:
            if isinstance(item, Finished):
                device = item.record.device
                self._finishing[device] = self._finishing.get(device, 0) + 1
        self._enqueue(*items)

    def next_deadline(self) -> float | None:
        return self.executor.next_deadline()

    # ---------------------------------------------------------------------------------------- events

    def submit(self, request: CommandRequest, now: float, *, accepted: Callable[[], None] | None = None
               ) -> CommandRecord:
        """Hand a command to the executor (raises, changing nothing, when its queue is full).

        `accepted` runs once the executor took it and before its effects are queued, so a row it queues
        (the manual layer of a person's command) is stored ahead of the command's own.
        """
        effects = self.executor.submit(request, now)
        if accepted is not None:
            accepted()
        self._queue(*effects)
        record = self.executor.get(request.command_id)
        assert record is not None
        return record

    async def wait_finished(self, command_id: str, timeout: float) -> CommandRecord:
        """The record once finished, or as it stands after `timeout` seconds."""
        record = self.record(command_id)
        if record is None:
            raise NotFoundError("command", command_id)
        if record.status.finished:
            return record
        fut: asyncio.Future[CommandRecord] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(command_id, []).append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            latest = self.record(command_id)
            return latest if latest is not None else record
        finally:
            waiters = self._waiters.get(command_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    del self._waiters[command_id]

    def ack(self, device: str, ack: Ack, now: float) -> None:
        """An acknowledgement from the device (its driver decoded it)."""
        effects = self.executor.ack(device, ack, now)
        finished = next((e.record for e in effects if isinstance(e, Finished)
                         and e.record.command_id == ack.command_id), None)
        out: list[Item] = []
        states = [e for e in effects if isinstance(e, StateReported)]
        if finished is not None and ack.ok and not states:
            states = [StateReported(device, acked_state(device_command(finished.action, finished.value)), now)]
        for reported in states:
            # Now, not in the effects task: the reconciler (run by the Finished effect, or by a layer change
            # in between) must compare against what the device just said.
            merged = self._state_reported(reported.device, reported.state, reported.at)
            out.append(control_repo.device_state_row(reported.device, merged))
        out.extend(e for e in effects if not isinstance(e, StateReported))
        self._queue(*out)

    def device_offline(self, device: str, now: float) -> None:
        self._queue(*self.executor.device_offline(device, now))

    def device_online(self, device: str, now: float) -> None:
        """The device listens for commands: send what waits (or a retry that fell due meanwhile)."""
        self._queue(*self.executor.device_online(device, now))

    def tick(self, now: float) -> None:
        """Retries and timeouts that are due."""
        self._queue(*self.executor.tick(now))

    def cancel(self, command_id: str, now: float, reason: str) -> CommandRecord | None:
        """Cancel a pending or in-flight command: its record as cancelled, or None when it is not under way."""
        effects = self.executor.cancel(command_id, now, reason)
        self._queue(*effects)
        return next((e.record for e in effects if isinstance(e, Finished) and e.record.command_id == command_id),
                    None)

    def close_unfinished(self, rows: list[UnfinishedCommand], now: float, *, carried: Callable[[str], bool]) -> None:
        """Commands still pending or sent when the gateway stopped: their queue was in memory.

        What they asked for lives on as desired state when `carried(device)` (the manual layer is stored),
        so the reconciler applies it when the device is back; their own audit rows must not say "pending"
        forever.
        """
        for row in rows:
            error = ("gateway restarted; the desired state is applied when the device is back" if carried(row.device)
                     else "gateway restarted before the device was back; not carried out (its state was never known)")
            # action and source were written by this service: valid values of their kinds
            record = CommandRecord(
                row.command_id, row.device, cast(Action, row.action), row.value, cast(Source, row.source),
                CommandStatus.CANCELLED, row.attempts, row.created_at, row.sent_at, row.last_sent_at, now, error,
                None, row.note, row.cause, log_from_json(row.attempt_log),
            )
            self._queue(Audit(record, "cancelled"), Finished(record))
        if rows:
            log.info("control.commands_interrupted", count=len(rows))

    # --------------------------------------------------------------------------------------- effects

    async def perform(self, item: Effect | StoreRecord) -> None:
        """Carry out one queued effect (the control loop calls this, in queue order)."""
        if isinstance(item, Send):
            self.sends.start(item)  # in its own task: a slow link must not hold up the control loop
        elif isinstance(item, Audit):
            self._remember(item.record)
            await self._put(control_repo.command_row(item.record))
        elif isinstance(item, StateReported):
            merged = self._state_reported(item.device, item.state, item.at)
            await self._put(control_repo.device_state_row(item.device, merged))
        elif isinstance(item, Finished):
            self._finished(item.record)
            r = item.record
            await self._put(DeviceEvent(r.finished_at or self._clock.now(), r.device, "command.result", {
                "commandId": r.command_id, "action": r.action, "value": r.value, "source": r.source,
                "cause": r.cause, "status": r.status.value, "attempts": r.attempts, "error": r.error, "state": r.state,
            }))
        elif isinstance(item, Ignored):
            self._metrics.inc("gateway_acks_ignored_total", 1, "acks no command waited for")
            log.warning("command.ack_ignored", device_id=item.device, command_id=item.command_id, reason=item.reason)
        else:
            await self._put(item)

    async def _attempt(self, item: Send) -> None:
        """One attempt through the device's link (a DeviceSends task)."""
        try:
            ack = await self._send(item.command)
        except LinkError as exc:
            # Not sent: the attempt stays unanswered and the executor retries it at its deadline.
            log.warning("command.not_sent", command_id=item.command_id, device_id=item.command.device_id,
                        error=str(exc))
            self._queue(*self.executor.not_sent(item.command_id, item.attempt, str(exc)))
            return
        self._metrics.inc("gateway_commands_published_total", 1, "command messages sent to devices")
        if ack is not None:  # the link's reply is the acknowledgement (a Modbus write)
            self.ack(item.command.device_id, ack, self._clock.now())

    def _remember(self, record: CommandRecord) -> None:
        self._records[record.command_id] = record
        self._records.move_to_end(record.command_id)
        while len(self._records) > _REMEMBER_RECORDS:
            self._records.popitem(last=False)

    def _finished(self, record: CommandRecord) -> None:
        left = self._finishing.get(record.device, 0) - 1
        if left > 0:
            self._finishing[record.device] = left
        else:
            self._finishing.pop(record.device, None)
        self._remember(record)
        for fut in self._waiters.pop(record.command_id, []):
            if not fut.done():
                fut.set_result(record)
        self._metrics.inc("gateway_commands_finished_total", 1, "commands finished", status=record.status.value)
        log.info("command.finished", device_id=record.device, command_id=record.command_id, action=record.action,
                 status=record.status.value, attempts=record.attempts, source=record.source)
        self._on_finished(record)
