"""The control service's facade: commands, desired-state layers, the reconciler, schedules and pre-clean.

One object is what the composition root, the REST API and the cloud's methods hold. It builds the parts
and routes each event to them; they share one effect queue and one task (gateway/control/loop.py):

* commands  (command_service.py): submit, wait for the result, acks, devices going offline and back,
  and the executor's effects (the message to the device, the audit row, the ``command.result`` event);
* layers    (layers.py): the desired-state layers and the rows that make them survive a restart;
* reconciler (reconciler.py): layers -> commands, one step at a time, with its back-off;
* pre-clean (preclean.py) and schedules (schedule_service.py): set and end their layers;
* the loop  (loop.py): performs the queued effects in order and owns the one timer.

Every part mutates its state synchronously on the event loop and queues its I/O; the loop's task
performs it in order. So an ack arriving on the broker's client path, an API request and a timer never
interleave half-way through a change, and the broker never waits on the database (DESIGN principle 3).

A command from a person or the cloud sets the *manual* layer and is submitted at once (to an offline
device it waits in its queue, audit note "queued"). Schedules and pre-clean set their layers and the
reconciler drives the device towards the winner. The parts return domain objects; the JSON forms are
gateway/web/views.py's. Reads of the stored state at start-up go through gateway/store/control_repo.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from gateway.control.command_model import AUTOMATIC, CommandError, CommandRecord, CommandRequest
from gateway.control.command_service import CommandService, Put
from gateway.control.commands import CommandExecutor
from gateway.control.desired import Effective, FanState, Layer, LayerEntry
from gateway.control.layers import Layers
from gateway.control.loop import ControlLoop, Item
from gateway.control.preclean import Precleans, PrecleanStatus
from gateway.control.reconciler import Reconciler
from gateway.control.schedule_service import HISTORY_KEPT, RunRecord, ScheduleService
from gateway.control.schedules import Schedule, ScheduleError
from gateway.core.clock import Clock
from gateway.core.device_commands import Ack, DeviceCommand, OutgoingCommand, SetFanSpeed, device_command
from gateway.core.errors import ConflictError, NotFoundError
from gateway.core.metrics import Metrics
from gateway.core.registry import Change, DeviceChange, DeviceRegistry
from gateway.store import control_repo

if TYPE_CHECKING:
    import aiosqlite

    from gateway.settings import ControlSection


@dataclass(frozen=True, slots=True)
class DeviceControl:
    """A device's control state: the winning layer, every active layer, and its commands under way."""

    desired: Effective | None
    layers: dict[Layer, LayerEntry]
    in_flight: CommandRecord | None
    pending: list[CommandRecord]


class CommandLinks(Protocol):
    """What control needs of the device links (gateway.core.links.DeviceLinks)."""

    async def send(self, command: OutgoingCommand) -> Ack | None: ...

    def command_ready(self, device_id: str) -> bool: ...


class AckSource(Protocol):
    def subscribe_acks(self, handler: Callable[[str, Ack, float], Awaitable[None]]) -> None: ...


# Raises ValueError when the device's driver cannot do the command (a range, a kind that takes none).
CheckCommand = Callable[[str, DeviceCommand], None]


class Controller:
    def __init__(
        self,
        settings: ControlSection,
        *,
        timezone: str,
        clock: Clock,
        put: Put,
        registry: DeviceRegistry,
        links: CommandLinks,
        acks: AckSource,
        metrics: Metrics,
        check_command: CheckCommand = lambda device, command: None,
    ) -> None:
        self._devices = frozenset(registry.configured())
        self._clock = clock
        self._registry = registry
        self._check_command = check_command
        self._command_ready = links.command_ready  # is the device connected and subscribed to its commands?
        self.loop = ControlLoop(clock=clock, metrics=metrics, perform=self._perform, tick=self._tick,
                                deadline=self._deadline)
        queue = self.loop.queue
        self.commands = CommandService(
            CommandExecutor(timeout=settings.command_timeout_seconds, attempts=settings.command_attempts,
                            max_pending=settings.max_pending_per_device),
            clock=clock, queue=queue, put=put, send=links.send,
            state_reported=lambda device, state, _at: registry.report(device, state), metrics=metrics,
            finished=self._command_finished,
        )
        self.layers = Layers(reported=registry.reported, queue=queue)
        self.reconciler = Reconciler(settings, layers=self.layers, commands=self.commands, reported=registry.reported,
                                     known=self.known, metrics=metrics, desired=self._desired_changed)
        self.precleans = Precleans(layers=self.layers, layer_changed=self.reconciler.layer_changed, queue=queue)
        self.schedules = ScheduleService(timezone=timezone, layers=self.layers,
                                         layer_changed=self.reconciler.layer_changed, queue=queue, known=self.known,
                                         metrics=metrics)
        acks.subscribe_acks(self.on_ack)
        registry.subscribe(self._device_changed, Change.PRESENCE, Change.READY, Change.DEVICES)

    def _device_changed(self, change: DeviceChange) -> None:
        if change.change is Change.DEVICES:  # a config reload
            self.set_devices(self._registry.configured())
            return
        if change.device_id is None or change.state is None:
            return
        if change.change is Change.READY:
            self.device_ready(change.device_id)
        else:
            self.device_status(change.device_id, change.state.online)

    def _desired_changed(self, device: str, effective: Effective | None) -> None:
        if effective is None:
            self._registry.set_desired(device, None)
            return
        self._registry.set_desired(device, {
            "powerOn": effective.value.power, "fanSpeed": effective.value.fan_speed,
            "layer": effective.layer.label, "expiresAt": effective.expires_at,
        })

    def _check(self, device: str, command: DeviceCommand, field: str) -> None:
        """The device's driver has the last word on what it can do (its ranges, or no commands at all)."""
        try:
            self._check_command(device, command)
        except ValueError as exc:
            raise CommandError(field, str(exc)) from None

    @property
    def executor(self) -> CommandExecutor:
        return self.commands.executor

    # ---------------------------------------------------------------------------------- start-up

    async def load(self, conn: aiosqlite.Connection) -> None:
        """Rebuild schedules, the manual layer and a running pre-clean from the database (before run())."""
        now = self._clock.now()
        self.schedules.restore(await control_repo.load_schedules(conn),
                               high_water=await control_repo.schedule_id_high_water(conn),
                               open_starts=await control_repo.run_starts_open_at(conn, now))
        self.schedules.restore_history(await control_repo.recent_runs(conn, HISTORY_KEPT))
        self.schedules.end_missed_runs(await control_repo.runs_ended_unrecorded(conn, now), now)
        for stored in await control_repo.load_layers(conn):
            if stored.layer == Layer.MANUAL.label:
                self.layers.restore_manual(stored.device, FanState(stored.power, stored.fan_speed), stored.source)
            elif stored.layer == Layer.PRECLEAN.label:
                self.precleans.restore(stored, now)
        self.commands.close_unfinished(await control_repo.unfinished_commands(conn), now,
                                       carried=self.layers.has_manual)
        self.schedules.evaluate_all(now)

    # ------------------------------------------------------------------------------------- queries

    def known(self, device: str) -> bool:
        return device in self._devices

    def set_devices(self, devices: Collection[str]) -> None:
        new = frozenset(devices)
        changed = new ^ self._devices
        self._devices = new
        if self.schedules.devices_changed(changed):
            self.loop.wake()

    def _require(self, device: str) -> None:
        if device not in self._devices:
            raise NotFoundError("device", device)

    def record(self, command_id: str) -> CommandRecord | None:
        return self.commands.record(command_id)

    def schedules_for(self, device: str) -> list[Schedule]:
        self._require(device)
        return self.schedules.for_device(device)

    def get_schedule(self, schedule_id: int) -> Schedule:
        return self.schedules.get(schedule_id)

    def all_schedules(self) -> list[Schedule]:
        """Every schedule, by id."""
        return sorted(self.schedules.schedules.values(), key=lambda s: s.id)

    def schedule_history(self, schedule_id: int) -> list[RunRecord]:
        """The schedule's latest runs, newest first (the store has them all)."""
        return self.schedules.history(schedule_id)

    def schedule_boundaries(self) -> dict[str, datetime]:
        """``schedule:{id}:start|end`` -> the next instant (UTC) of each enabled schedule's boundaries."""
        return self.schedules.boundaries(self._clock.now())

    def preclean_status(self, device: str) -> PrecleanStatus:
        self._require(device)
        return self.precleans.status(device, self._clock.now())

    def device_control(self, device: str) -> DeviceControl:
        self._require(device)
        now = self._clock.now()
        desired = self.layers.desired
        return DeviceControl(desired.effective(device, now), dict(sorted(desired.layers(device, now).items())),
                             self.executor.in_flight(device), self.executor.pending(device))

    # ------------------------------------------------------------------------------------ commands

    def submit_command(self, device: str, action: str, value: int | None, source: str) -> CommandRecord:
        """A command from a person or the cloud: it becomes the manual layer and is sent (or queued) now."""
        self._require(device)
        request = CommandRequest.create(device, action, value, source=source)
        self._check(device, device_command(request.action, request.value), "value")
        now = self._clock.now()

        def set_manual() -> None:
            self.layers.command_set_manual(device, request, now, live=self._live)
            self.reconciler.manual_set(device)

        return self.commands.submit(request, now, accepted=set_manual)

    def _live(self, command_id: str) -> bool:
        return self.executor.get(command_id) is not None

    async def cancel_command(self, command_id: str, source: str) -> CommandRecord:
        """Cancel a command still pending or sent (NotFoundError: unknown; ConflictError: already finished).

        A person's command also leaves the manual layer as it would be without it; nothing is sent for that.
        """
        record = self.commands.record(command_id)
        if record is None:
            raise NotFoundError("command", command_id)
        if record.status.finished:
            raise ConflictError(f"command {command_id} already finished ({record.status.value})")
        now = self._clock.now()
        cancelled = self.commands.cancel(command_id, now, f"cancelled by {source}")
        assert cancelled is not None  # it was under way, and the executor is only changed on this loop
        if record.source != AUTOMATIC:
            in_flight = self.executor.in_flight(record.device)
            others = [r for r in (*([in_flight] if in_flight else []), *self.executor.pending(record.device))
                      if r.source != AUTOMATIC]
            self.layers.command_cancelled(record.device, command_id, (
                CommandRequest(r.command_id, r.device, r.action, r.value, r.source) for r in others), now)
        await self.drained()
        return cancelled

    async def wait_finished(self, command_id: str, timeout: float) -> CommandRecord:
        return await self.commands.wait_finished(command_id, timeout)

    async def on_ack(self, device: str, ack: Ack, now: float) -> None:
        """Ingest's ack handler: an acknowledgement the device's driver decoded."""
        self.commands.ack(device, ack, now)

    def device_status(self, device: str, online: bool) -> None:
        """Ingest saw a device go offline or come back (connection, Will, or its status message).

        Coming online counts only with its command subscription in place (`device_ready` says when it is
        made): a device that said "offline" then "online" on one connection is ready again at once.
        """
        if device not in self._devices:
            return
        if not online:
            self.commands.device_offline(device, self._clock.now())
        elif self._command_ready(device) and not self.executor.is_online(device):
            self.device_ready(device)

    def device_ready(self, device: str) -> None:
        """The device is connected and subscribed to its command topic: send what waits, re-drive it."""
        if device not in self._devices:
            return
        now = self._clock.now()
        self.commands.device_online(device, now)
        self.reconciler.device_ready(device, now)

    def _command_finished(self, record: CommandRecord) -> None:
        self.reconciler.command_finished(record, self._clock.now())

    # ----------------------------------------------------------------------------------- pre-clean

    async def start_preclean(self, device: str, fan_speed: int, minutes: int, source: str) -> PrecleanStatus:
        self._require(device)
        if isinstance(fan_speed, int) and not isinstance(fan_speed, bool):
            self._check(device, SetFanSpeed(fan_speed), "fanSpeed")
        self.precleans.start(device, fan_speed, minutes, source, self._clock.now())
        await self.drained()
        return self.preclean_status(device)

    async def cancel_preclean(self, device: str, source: str) -> PrecleanStatus:
        self._require(device)
        self.precleans.cancel(device, source, self._clock.now())
        await self.drained()
        return self.preclean_status(device)

    # ----------------------------------------------------------------------------------- schedules

    async def create_schedule(self, body: Mapping[str, object]) -> Schedule:
        self._check_schedule(body.get("device"), body.get("fanSpeed"))
        schedule = self.schedules.create(body, self._clock.now())
        return await self._schedules_changed(schedule)

    async def update_schedule(self, schedule_id: int, body: Mapping[str, object]) -> Schedule:
        current = self.schedules.get(schedule_id)
        self._check_schedule(body.get("device", current.device), body.get("fanSpeed", current.fan_speed))
        schedule = self.schedules.update(schedule_id, body, self._clock.now())
        return await self._schedules_changed(schedule)

    async def delete_schedule(self, schedule_id: int) -> None:
        self.schedules.delete(schedule_id, self._clock.now())
        self.loop.wake()
        await self.drained()

    def _check_schedule(self, device: object, fan_speed: object) -> None:
        """A schedule's speed must suit its device's driver (malformed values are the schedule parser's)."""
        if isinstance(device, str) and device in self._devices and isinstance(fan_speed, int) \
                and not isinstance(fan_speed, bool):
            try:
                self._check_command(device, SetFanSpeed(fan_speed))
            except ValueError as exc:
                raise ScheduleError("fanSpeed", str(exc)) from None

    async def _schedules_changed(self, schedule: Schedule) -> Schedule:
        self.loop.wake()  # the next boundary may be sooner than the timer's
        await self.drained()
        return schedule

    # ------------------------------------------------------------------------------------ the task

    async def run(self) -> None:
        try:
            await self.loop.run()
        finally:
            await self.commands.sends.cancel()

    async def drained(self) -> None:
        """Wait until what was queued so far has been handed to the store, and its commands to their links
        (API answers after that)."""
        await self.loop.drained()
        await self.commands.sends.idle()

    def wake(self) -> None:
        """Re-evaluate now (after a test moved its clock)."""
        self.schedules.mark_due()
        self.loop.wake()

    async def flush_records(self) -> None:
        """At shutdown (task cancelled, intake stopped): store what is still queued, send nothing."""
        await self.loop.flush_records()

    def next_wakeup_delay(self) -> float:
        """Seconds the control task sleeps before its next tick (at most loop.MAX_SLEEP_S)."""
        return self.loop.next_wakeup_delay()

    async def _perform(self, item: Item) -> None:
        await self.commands.perform(item)

    def _tick(self, now: float) -> None:
        """The timer's work: retries and timeouts, schedule boundaries, layers that expired, back-offs."""
        self.commands.tick(now)
        self.schedules.tick(now)
        for ended in self.layers.desired.purge_expired(now):
            if ended.layer is Layer.PRECLEAN:
                self.precleans.expired(ended.device, now)
            elif ended.layer is Layer.SCHEDULE:
                self.schedules.evaluate(ended.device, now)  # another overlapping window may take over
            self.reconciler.layer_changed(ended.device, now, ended.layer.label)
        self.reconciler.tick(now)

    def _deadline(self, now: float) -> float | None:
        """The earliest instant the timer has work: a command deadline, a layer's expiry, a schedule
        boundary, the end of a back-off."""
        times = [t for t in (
            self.commands.next_deadline(),
            self.layers.desired.next_wakeup(now),
            self.schedules.next_transition,
            self.reconciler.next_deadline(now),
        ) if t is not None]
        return min(times, default=None)
