"""The control service: commands, desired-state layers, the reconciler, weekly schedules and pre-clean.

One object owns all control state and mutates it synchronously on the event loop; I/O (publishing a
command, writing the audit log and events) is queued as effects and performed, in order, by its own
task (`run()`). So an ack arriving on the broker's client path, an API request and a timer never
interleave half-way through a change, and the broker never waits on the database.

How the parts meet (DESIGN principle 3):

* **Commands** from the panel, the API or the cloud set the *manual* layer and are submitted to the
  executor at once (a command to an offline device waits in its queue, audit note "queued").
* **Schedules and pre-clean** set their layers; the **reconciler** compares the effective desired state
  with what the device last reported (readings and acks) and submits the commands needed to get there.
  It runs when a layer changes or expires, when the device comes online, and at start-up; never while
  the device still has commands queued or in flight (it runs again when they finish), and after a
  failure of its own commands it backs off (doubling) unless a layer changes or the device reconnects.
* A manual command while a schedule or pre-clean is in effect is carried out; the higher layer takes
  the device back at its next change (its end, a new window) or when the device reconnects.
* **Time**: all decisions use the injected clock. Our own timer wakes at the next deadline (command
  timeout, layer expiry, schedule boundary); APScheduler's cron jobs fire at schedule boundaries too.
  Both only ask for an idempotent re-evaluation, so a doubled fire (DST fall-back) or a missed one
  (suspend) changes nothing (see gateway/control/schedules.py for the rules).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import structlog

from gateway.control.commands import (
    SOURCES,
    Audit,
    CommandError,
    CommandExecutor,
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
from gateway.control.desired import DesiredState, FanState, Layer
from gateway.control.schedules import (
    Schedule,
    ScheduleDecision,
    ScheduleError,
    Window,
    active_windows,
    cron_jobs,
    format_hhmm,
    next_transition,
    parse_hhmm,
    parse_schedule,
)
from gateway.core.clock import Clock
from gateway.core.device_commands import Ack, OutgoingCommand
from gateway.core.errors import ConflictError, NotFoundError
from gateway.core.links import LinkError
from gateway.core.metrics import Metrics
from gateway.core.models import DeviceEvent, RowWrite, StoreRecord

if TYPE_CHECKING:
    import aiosqlite

    from gateway.settings import ControlSection

log = structlog.get_logger(__name__)

Put = Callable[[StoreRecord], Awaitable[None]]
# Hands one attempt of a command to the device's link (gateway.core.links.DeviceLinks.send).
SendFn = Callable[[OutgoingCommand], Awaitable[Ack | None]]
Reported = Callable[[str], Mapping[str, Any] | None]
# Lays an ack's state over the device's latest metrics; returns the merged metrics to persist.
StateSink = Callable[[str, Mapping[str, Any], float], dict[str, Any]]

PRECLEAN_MINUTES_MAX = 24 * 60
MAX_SLEEP_S = 60.0
_REMEMBER_RECORDS = 2048
_LAYER_NAMES = {Layer.MANUAL: "manual", Layer.SCHEDULE: "schedule", Layer.PRECLEAN: "preclean", Layer.RULE: "rule"}
_LAYER_SOURCE: dict[Layer, Source] = {Layer.SCHEDULE: "schedule", Layer.PRECLEAN: "preclean", Layer.RULE: "rule"}


@dataclass(slots=True)
class _Preclean:
    fan_speed: int
    started_at: float
    ends_at: float
    source: str


@dataclass(slots=True)
class _Backoff:
    until: float
    delay: float


def command_json(record: CommandRecord) -> dict[str, Any]:
    return {
        "commandId": record.command_id,
        "device": record.device,
        "action": record.action,
        "value": record.value,
        "source": record.source,
        "status": record.status.value,
        "attempts": record.attempts,
        "createdAt": record.created_at,
        "sentAt": record.sent_at,
        "lastSentAt": record.last_sent_at,
        "finishedAt": record.finished_at,
        "error": record.error,
        "state": record.state,
        "note": record.note,
    }


def _audit_row(record: CommandRecord) -> RowWrite:
    return RowWrite("command_log", {
        "command_id": record.command_id,
        "device_id": record.device,
        "action": record.action,
        "value": record.value,
        "source": record.source,
        "status": record.status.value,
        "attempts": record.attempts,
        "created_at": record.created_at,
        "sent_at": record.sent_at,
        "last_sent_at": record.last_sent_at,
        "finished_at": record.finished_at,
        "error": record.error,
        "state": record.state,
        "note": record.note,
    })


def _schedule_row(schedule: Schedule, now: float, *, created_at: float) -> RowWrite:
    # Every column, also on update: SQLite checks NOT NULL on the row to insert before it sees the conflict.
    row: dict[str, Any] = {
        "id": schedule.id,
        "device_id": schedule.device,
        "days": sorted(schedule.days),
        "start": format_hhmm(schedule.start),
        "end": format_hhmm(schedule.end),
        "fan_speed": schedule.fan_speed,
        "enabled": schedule.enabled,
        "updated_at": now,
        "created_at": created_at,
    }
    return RowWrite("schedules", row)


def _reached(record: CommandRecord, reported: Mapping[str, Any]) -> bool:
    """Does the device's reported state show what this command asked for?"""
    if record.action == "turnOn":
        return reported.get("powerOn") is True
    if record.action == "turnOff":
        return reported.get("powerOn") is False
    return bool(reported.get("fanSpeed") == record.value)


def _acked_state(record: CommandRecord) -> dict[str, Any]:
    """What an "ok" ack without a state tells us: the command's own effect."""
    if record.action == "setFanSpeed":
        return {"fanSpeed": record.value}
    return {"powerOn": record.action == "turnOn"}


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Controller:
    def __init__(
        self,
        settings: ControlSection,
        *,
        devices: Collection[str],
        timezone: str,
        clock: Clock,
        put: Put,
        send: SendFn,
        reported: Reported,
        state_reported: StateSink,
        metrics: Metrics,
        command_ready: Callable[[str], bool] = lambda device: False,
    ) -> None:
        self._settings = settings
        self._devices = frozenset(devices)
        self._tz = ZoneInfo(timezone)
        self._clock = clock
        self._put = put
        self._send = send
        self._reported = reported
        self._state_reported = state_reported
        self._command_ready = command_ready  # is the device connected and subscribed to its commands?
        self._metrics = metrics
        self.executor = CommandExecutor(
            timeout=settings.command_timeout_seconds,
            attempts=settings.command_attempts,
            max_pending=settings.max_pending_per_device,
        )
        self.desired = DesiredState()
        self._manual_source: dict[str, str] = {}
        self._preclean: dict[str, _Preclean] = {}
        self.schedules: dict[int, Schedule] = {}
        self._schedule_created: dict[int, float] = {}
        self._next_schedule_id = 1
        # device -> windows whose start is in the history and whose end is not yet (an overlapped window
        # keeps running under a faster one: it ends when it ends, not when it is outranked)
        self._open_runs: dict[str, dict[tuple[int, float], Window]] = {}
        self._started_before: set[tuple[int, float]] = set()  # starts recorded before a restart
        self._next_transition: float | None = None
        self._backoff: dict[str, _Backoff] = {}
        self._restored_by: dict[str, Source] = {}  # device -> the override whose end returns it to manual
        self._dirty: set[str] = set()  # a layer changed while the device was busy: reconcile when it is free
        self._reconciling: dict[str, set[str]] = {}  # device -> ids of commands the reconciler submitted
        self._effects: deque[Effect | StoreRecord] = deque()
        self._wake = asyncio.Event()
        self._schedules_due = False
        self._waiters: dict[str, list[asyncio.Future[CommandRecord]]] = {}
        self._records: OrderedDict[str, CommandRecord] = OrderedDict()  # recent records, for waiters and pages
        self._scheduler: Any = None  # APScheduler's AsyncIOScheduler, created with the first schedule
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = False

    # ---------------------------------------------------------------------------------- start-up

    async def load(self, conn: aiosqlite.Connection) -> None:
        """Rebuild schedules, the manual layer and a running pre-clean from the database (before run())."""
        now = self._clock.now()
        async with conn.execute(
            "SELECT id, device_id, days, start, end, fan_speed, enabled, created_at FROM schedules ORDER BY id"
        ) as cur:
            async for sid, device, days, start, end, fan, enabled, created in cur:
                schedule = Schedule(sid, device, frozenset(json.loads(days)), parse_hhmm(start, "start"),
                                    parse_hhmm(end, "end"), fan, bool(enabled))
                self.schedules[sid] = schedule
                self._schedule_created[sid] = created
        async with conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'schedules'") as cur:
            row = await cur.fetchone()
        self._next_schedule_id = max([int(row[0]) if row else 0, *self.schedules]) + 1
        async with conn.execute(
            "SELECT schedule_id, window_start FROM schedule_runs WHERE phase = 'start' AND window_end > ?", (now,)
        ) as cur:
            async for sid, window_start in cur:
                self._started_before.add((sid, window_start))
        await self._end_runs_missed_while_down(conn, now)
        async with conn.execute(
            "SELECT device_id, layer, power, fan_speed, expires_at, started_at, source FROM desired_layers"
        ) as cur:
            rows = await cur.fetchall()
        for device, layer, power, fan, expires_at, started_at, source in rows:
            value = FanState(bool(power), int(fan))
            if layer == "manual":
                self.desired.set_layer(device, Layer.MANUAL, value)
                self._manual_source[device] = source
            elif layer == "preclean":
                if expires_at is not None and expires_at > now:
                    self.desired.set_layer(device, Layer.PRECLEAN, value, expires_at)
                    self._preclean[device] = _Preclean(int(fan), started_at, expires_at, source)
                    log.info("preclean.resumed", device_id=device, remaining_s=round(expires_at - now, 1))
                else:  # it ended while the gateway was down: say so, and the reconciler restores
                    self._emit_preclean_ended(device, _Preclean(int(fan), started_at, expires_at, source),
                                              "expired", now)
        await self._close_interrupted_commands(conn, now)
        for device in sorted({s.device for s in self.schedules.values()}):
            self._evaluate_schedule(device, now)
        self._refresh_next_transition(now)
        self._sync_scheduler_jobs()

    async def _close_interrupted_commands(self, conn: aiosqlite.Connection, now: float) -> None:
        """Commands still pending or sent when the gateway stopped: their queue was in memory.

        What they asked for lives on as desired state (the manual layer is stored), so the reconciler
        applies it when the device is back; their own audit rows must not say "pending" forever.
        """
        async with conn.execute(
            "SELECT command_id, device_id, action, value, source, attempts, created_at, sent_at, last_sent_at, note "
            "FROM command_log WHERE status IN ('pending', 'sent')"
        ) as cur:
            rows = list(await cur.fetchall())
        for cid, device, action, value, source, attempts, created_at, sent_at, last_sent_at, note in rows:
            carried = self.desired.get_layer(device, Layer.MANUAL) is not None
            error = ("gateway restarted; the desired state is applied when the device is back" if carried else
                     "gateway restarted before the device was back; not carried out (its state was never known)")
            record = CommandRecord(
                cid, device, action, value, source, CommandStatus.CANCELLED, attempts, created_at, sent_at,
                last_sent_at, now, error, None, note,
            )
            self._queue(Audit(record, "cancelled"), Finished(record))
        if rows:
            log.info("control.commands_interrupted", count=len(rows))

    # ------------------------------------------------------------------------------------- queries

    def known(self, device: str) -> bool:
        return device in self._devices

    def set_devices(self, devices: Collection[str]) -> None:
        new = frozenset(devices)
        changed = new ^ self._devices
        self._devices = new
        if any(s.device in changed for s in self.schedules.values()):
            # A device that left the config ends its open runs; one that came back starts the window it is in.
            self._schedules_due = True
            self._wake.set()

    def _require(self, device: str) -> None:
        if device not in self._devices:
            raise NotFoundError("device", device)

    def command_json(self, record: CommandRecord) -> dict[str, Any]:
        return command_json(record)

    def record(self, command_id: str) -> CommandRecord | None:
        return self.executor.get(command_id) or self._records.get(command_id)

    def schedules_for(self, device: str) -> list[Schedule]:
        self._require(device)
        return [s for s in self.schedules.values() if s.device == device]

    def get_schedule(self, schedule_id: int) -> Schedule:
        schedule = self.schedules.get(schedule_id)
        if schedule is None:
            raise NotFoundError("schedule", schedule_id)
        return schedule

    def preclean_status(self, device: str) -> dict[str, Any]:
        self._require(device)
        now = self._clock.now()
        run = self._preclean.get(device)
        if run is None or run.ends_at <= now:
            return {"device": device, "active": False, "fanSpeed": None, "startedAt": None, "endsAt": None,
                    "remainingSeconds": 0}
        return {"device": device, "active": True, "fanSpeed": run.fan_speed, "startedAt": run.started_at,
                "endsAt": run.ends_at, "remainingSeconds": round(run.ends_at - now, 3), "source": run.source}

    def device_control(self, device: str) -> dict[str, Any]:
        self._require(device)
        now = self._clock.now()
        eff = self.desired.effective(device, now)
        in_flight = self.executor.in_flight(device)
        return {
            "desired": None if eff is None else {
                "power": eff.value.power, "fanSpeed": eff.value.fan_speed,
                "layer": _LAYER_NAMES[eff.layer], "expiresAt": eff.expires_at,
            },
            "layers": {
                _LAYER_NAMES[layer]: {"power": e.value.power, "fanSpeed": e.value.fan_speed, "expiresAt": e.expires_at}
                for layer, e in sorted(self.desired.layers(device, now).items())
            },
            "inFlight": None if in_flight is None else command_json(in_flight),
            "pending": [command_json(r) for r in self.executor.pending(device)],
        }

    # ------------------------------------------------------------------------------------ commands

    def submit_command(self, device: str, action: str, value: int | None, source: str) -> CommandRecord:
        """A command from a person or the cloud: it becomes the manual layer and is sent (or queued) now."""
        self._require(device)
        request = CommandRequest.create(device, action, value, source=source)
        now = self._clock.now()
        effects = self.executor.submit(request, now)
        manual = self._manual_after(device, request)
        if manual is not None:
            self.desired.set_layer(device, Layer.MANUAL, manual)
            self._manual_source[device] = source
            self._queue(self._layer_row(device, Layer.MANUAL, manual, None, now, source))
        self._queue(*effects)
        record = self.executor.get(request.command_id)
        assert record is not None
        return record

    def _manual_after(self, device: str, request: CommandRequest) -> FanState | None:
        """The manual layer once this command is done: a command changes power or speed, the other stays.

        The other half comes from the manual layer, else from what the device last reported. When the
        speed was never known there is no manual layer to keep (the device keeps its own).
        """
        entry = self.desired.get_layer(device, Layer.MANUAL)
        reported = self._reported(device) or {}
        power: object = entry.value.power if entry else reported.get("powerOn")
        speed: object = entry.value.fan_speed if entry else reported.get("fanSpeed")
        if request.action == "setFanSpeed":
            speed = request.value
        else:
            power = request.action == "turnOn"
        if not isinstance(power, bool):
            power = True  # a speed was set: a purifier told its speed is expected to run
        if isinstance(speed, bool) or not isinstance(speed, int) or not 0 <= speed <= 5:
            return None
        return FanState(power, speed)

    async def wait_finished(self, command_id: str, timeout: float) -> CommandRecord:
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

    async def on_ack(self, device: str, ack: Ack, now: float) -> None:
        """Ingest's ack handler: an acknowledgement the device's driver decoded."""
        effects = self.executor.ack(device, ack, now)
        finished = next((e.record for e in effects if isinstance(e, Finished)
                         and e.record.command_id == ack.command_id), None)
        out: list[Effect | StoreRecord] = []
        states = [e for e in effects if isinstance(e, StateReported)]
        if finished is not None and ack.ok and not states:
            states = [StateReported(device, _acked_state(finished), now)]
        for reported in states:
            # Now, not in the effects task: the reconciler (run by the Finished effect, or by a layer change
            # in between) must compare against what the device just said.
            merged = self._state_reported(reported.device, reported.state, reported.at)
            out.append(RowWrite("device_state", {"device_id": reported.device, "last_metrics": merged}))
        out.extend(e for e in effects if not isinstance(e, StateReported))
        self._queue(*out)

    def device_status(self, device: str, online: bool) -> None:
        """Ingest saw a device go offline or come back (connection, Will, or its status message).

        Coming online counts only with its command subscription in place (`device_ready` says when it is
        made): a device that said "offline" then "online" on one connection is ready again at once.
        """
        if device not in self._devices:
            return
        if not online:
            self._queue(*self.executor.device_offline(device, self._clock.now()))
        elif self._command_ready(device) and not self.executor.is_online(device):
            self.device_ready(device)

    def device_ready(self, device: str) -> None:
        """The device is connected and subscribed to its command topic: send what waits, re-drive it."""
        if device not in self._devices:
            return
        now = self._clock.now()
        self._queue(*self.executor.device_online(device, now))
        self._backoff.pop(device, None)  # a reconnect is a fresh chance
        self._reconcile(device, now)

    # ------------------------------------------------------------------------------------ pre-clean

    async def start_preclean(self, device: str, fan_speed: int, minutes: int, source: str) -> dict[str, Any]:
        self._require(device)
        if isinstance(fan_speed, bool) or not isinstance(fan_speed, int) or not 1 <= fan_speed <= 5:
            raise CommandError("fanSpeed", f"expected a whole number 1..5, got {fan_speed!r}")
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= PRECLEAN_MINUTES_MAX:
            raise CommandError("minutes", f"expected a whole number 1..{PRECLEAN_MINUTES_MAX}, got {minutes!r}")
        now = self._clock.now()
        self._seed_manual(device, now, by="preclean")
        ends_at = now + minutes * 60.0
        value = FanState(True, fan_speed)
        replaced = device in self._preclean
        self._preclean[device] = _Preclean(fan_speed, now, ends_at, source)
        self.desired.set_layer(device, Layer.PRECLEAN, value, ends_at)
        self._queue(
            self._layer_row(device, Layer.PRECLEAN, value, ends_at, now, source),
            DeviceEvent(now, device, "preclean.started", {
                "fanSpeed": fan_speed, "minutes": minutes, "endsAt": ends_at, "source": source, "replaced": replaced,
            }),
        )
        log.info("preclean.started", device_id=device, fan_speed=fan_speed, minutes=minutes, source=source)
        self._layer_changed(device, now)
        await self.drained()
        return self.preclean_status(device)

    async def cancel_preclean(self, device: str, source: str) -> dict[str, Any]:
        self._require(device)
        now = self._clock.now()
        run = self._preclean.get(device)
        if run is None or run.ends_at <= now:
            raise ConflictError(f"no pre-clean is running on {device}")
        self.desired.clear_layer(device, Layer.PRECLEAN)
        self._emit_preclean_ended(device, run, "cancelled", now, source=source)
        self._layer_changed(device, now, cause="preclean")
        await self.drained()
        return self.preclean_status(device)

    def _emit_preclean_ended(self, device: str, run: _Preclean, reason: str, now: float, *, source: str | None = None
                             ) -> None:
        self._preclean.pop(device, None)
        data: dict[str, Any] = {"reason": reason, "fanSpeed": run.fan_speed, "startedAt": run.started_at,
                                "endsAt": run.ends_at}
        if source is not None:
            data["cancelledBy"] = source
        self._queue(
            RowWrite("desired_layers", {"device_id": device, "layer": "preclean"}, delete=True),
            DeviceEvent(now, device, "preclean.ended", data),
        )
        log.info("preclean.ended", device_id=device, reason=reason)

    def _seed_manual(self, device: str, now: float, *, by: Source) -> None:
        """Before an override, remember what the device does now, so its end can restore it.

        The restoring commands are then the override's doing, and the audit log says so (`by`).
        """
        if self.desired.get_layer(device, Layer.MANUAL) is not None:
            return
        reported = self._reported(device) or {}
        power, speed = reported.get("powerOn"), reported.get("fanSpeed")
        if isinstance(power, bool) and isinstance(speed, int) and not isinstance(speed, bool) and 0 <= speed <= 5:
            value = FanState(power, speed)
            self.desired.set_layer(device, Layer.MANUAL, value)
            self._manual_source[device] = by
            self._queue(self._layer_row(device, Layer.MANUAL, value, None, now, by))

    def _layer_row(self, device: str, layer: Layer, value: FanState, expires_at: float | None, now: float,
                   source: str) -> RowWrite:
        return RowWrite("desired_layers", {
            "device_id": device, "layer": _LAYER_NAMES[layer], "power": value.power, "fan_speed": value.fan_speed,
            "expires_at": expires_at, "started_at": now, "source": source,
        })

    # ------------------------------------------------------------------------------------ schedules

    async def create_schedule(self, body: Mapping[str, object]) -> Schedule:
        data = dict(body)
        if "device" not in data and "deviceId" in data:
            data["device"] = data.pop("deviceId")
        schedule = parse_schedule(data, schedule_id=self._next_schedule_id)
        self._require(schedule.device)
        self._next_schedule_id += 1
        now = self._clock.now()
        self.schedules[schedule.id] = schedule
        self._schedule_created[schedule.id] = now
        self._queue(_schedule_row(schedule, now, created_at=now))
        self._schedules_changed(schedule.device, now)
        await self.drained()
        return schedule

    async def update_schedule(self, schedule_id: int, body: Mapping[str, object]) -> Schedule:
        old = self.get_schedule(schedule_id)
        data: dict[str, object] = {**old.to_json(), **body}
        if "deviceId" in body:
            data["device"] = body["deviceId"]
        data.pop("deviceId", None)
        if data.get("id") != schedule_id:
            raise ScheduleError("id", "cannot be changed")
        schedule = parse_schedule(data, schedule_id=schedule_id)
        self._require(schedule.device)
        now = self._clock.now()
        self.schedules[schedule_id] = schedule
        self._queue(_schedule_row(schedule, now, created_at=self._schedule_created.get(schedule_id, now)))
        for device in {old.device, schedule.device}:
            self._schedules_changed(device, now)
        await self.drained()
        return schedule

    async def delete_schedule(self, schedule_id: int) -> None:
        old = self.get_schedule(schedule_id)
        del self.schedules[schedule_id]
        self._schedule_created.pop(schedule_id, None)
        now = self._clock.now()
        self._queue(RowWrite("schedules", {"id": schedule_id}, delete=True))
        self._schedules_changed(old.device, now)
        await self.drained()

    def _schedules_changed(self, device: str, now: float) -> None:
        self._evaluate_schedule(device, now)
        self._refresh_next_transition(now)
        self._sync_scheduler_jobs()
        self._wake.set()

    def _evaluate_schedule(self, device: str, now: float) -> None:
        """Set or clear the schedule layer from the windows in effect now (idempotent)."""
        # A device no longer in the config keeps its schedules (it may come back) but runs none of them.
        configured = device in self._devices
        windows = active_windows(self.schedules.values(), device, _utc(now), tz=self._tz) if configured else []
        decision = ScheduleDecision.of(windows)
        running = self._open_runs.setdefault(device, {})
        in_effect = {w.key for w in windows}
        for key, ended in list(running.items()):
            if key not in in_effect:  # over (or its schedule was changed or deleted)
                del running[key]
                self._record_run(ended, "end", now)
        window = decision.window
        if window is None or decision.value is None:
            if not running:
                self._open_runs.pop(device, None)
            if self.desired.clear_layer(device, Layer.SCHEDULE):
                self._layer_changed(device, now, cause="schedule")
            return
        if window.key not in running:
            running[window.key] = window
            if window.key in self._started_before:
                self._started_before.discard(window.key)  # began before a restart: one run, not two
            else:
                self._record_run(window, "start", now)
        entry = self.desired.get_layer(device, Layer.SCHEDULE)
        expires_at = decision.expires_at
        if entry is None or entry.value != decision.value or entry.expires_at != expires_at:
            self._seed_manual(device, now, by="schedule")
            self.desired.set_layer(device, Layer.SCHEDULE, decision.value, expires_at)
            self._layer_changed(device, now)

    async def _end_runs_missed_while_down(self, conn: aiosqlite.Connection, now: float) -> None:
        """Windows that started, then ended while the gateway was down: their history gets its end row."""
        async with conn.execute(
            "SELECT s.schedule_id, s.device_id, s.window_start, s.window_end, s.fan_speed FROM schedule_runs s "
            "WHERE s.phase = 'start' AND s.window_end <= ? AND NOT EXISTS (SELECT 1 FROM schedule_runs e "
            "WHERE e.phase = 'end' AND e.schedule_id = s.schedule_id AND e.window_start = s.window_start)",
            (now,),
        ) as cur:
            rows = list(await cur.fetchall())
        for sid, device, start, end, fan in rows:
            self._queue(
                RowWrite("schedule_runs", {"schedule_id": sid, "device_id": device, "phase": "end",
                                           "window_start": start, "window_end": end, "fan_speed": fan, "at": now}),
                DeviceEvent(now, device, "schedule.run", {"scheduleId": sid, "phase": "end", "fanSpeed": fan,
                                                          "windowStart": start, "windowEnd": end,
                                                          "endedWhileDown": True}),
            )

    def _record_run(self, window: Window, phase: str, now: float) -> None:
        s = window.schedule
        start, end = window.start.timestamp(), window.end.timestamp()
        self._queue(
            RowWrite("schedule_runs", {
                "schedule_id": s.id, "device_id": s.device, "phase": phase, "window_start": start,
                "window_end": end, "fan_speed": s.fan_speed, "at": now,
            }),
            DeviceEvent(now, s.device, "schedule.run", {
                "scheduleId": s.id, "phase": phase, "fanSpeed": s.fan_speed, "windowStart": start, "windowEnd": end,
            }),
        )
        log.info("schedule.run", schedule_id=s.id, device_id=s.device, phase=phase, fan_speed=s.fan_speed)

    def _refresh_next_transition(self, now: float) -> None:
        after = _utc(now)
        times = []
        for device in {s.device for s in self.schedules.values() if s.enabled and s.device in self._devices}:
            t = next_transition(self.schedules.values(), device, after, tz=self._tz)
            if t is not None:
                times.append(t.at.timestamp())
        self._next_transition = min(times, default=None)

    def _sync_scheduler_jobs(self) -> None:
        """APScheduler jobs mirror our schedules table (stable ids, replace_existing; nothing pickled)."""
        wanted = {job.job_id: job for s in self.schedules.values() for job in cron_jobs(s)}
        if self._scheduler is None:
            if not wanted:
                return  # APScheduler costs ~16 MB: only load it once there is a schedule
            from apscheduler.schedulers.asyncio import AsyncIOScheduler

            self._scheduler = AsyncIOScheduler(timezone=self._tz)
            if self._running:
                self._scheduler.start()
        from apscheduler.triggers.cron import CronTrigger

        scheduler = self._scheduler
        for job in scheduler.get_jobs():
            if job.id not in wanted:
                job.remove()
        for jid, job in wanted.items():
            scheduler.add_job(
                self._cron_fired, CronTrigger(**job.trigger_kwargs(), timezone=self._tz), id=jid,
                replace_existing=True, misfire_grace_time=self._settings.misfire_grace_seconds, coalesce=True,
                max_instances=1, args=[jid],
            )

    async def _cron_fired(self, jid: str) -> None:
        self._metrics.inc("gateway_schedule_fires_total", 1, "APScheduler schedule boundary fires")
        self._schedules_due = True
        self._wake.set()

    def scheduler_jobs(self) -> dict[str, datetime | None]:
        """Job id -> next fire time (for tests and the status page)."""
        if self._scheduler is None:
            return {}
        return {job.id: getattr(job, "next_run_time", None) for job in self._scheduler.get_jobs()}

    # ----------------------------------------------------------------------------------- reconciler

    def _layer_changed(self, device: str, now: float, cause: Source | None = None) -> None:
        """A layer was set, changed or ended (`cause`: the layer that ended, when the device returns to manual)."""
        self._backoff.pop(device, None)  # new intent: try at once
        if cause is not None:
            self._restored_by[device] = cause
        self._reconcile(device, now)

    def _reconcile(self, device: str, now: float) -> None:
        if device not in self._devices:
            return
        eff = self.desired.effective(device, now)
        if eff is None or not self.executor.is_online(device):
            return  # nothing wanted, or applied when the device comes online
        if self.executor.in_flight(device) is not None or self.executor.pending(device):
            self._dirty.add(device)
            return
        backoff = self._backoff.get(device)
        if backoff is not None and now < backoff.until:
            self._dirty.add(device)
            return
        self._dirty.discard(device)
        target = eff.value
        reported = self._reported(device) or {}
        actions: list[tuple[str, int | None]] = []
        if not target.power:
            if reported.get("powerOn") is not False:
                actions.append(("turnOff", None))
        else:
            if reported.get("powerOn") is not True:
                actions.append(("turnOn", None))
            if reported.get("fanSpeed") != target.fan_speed:
                actions.append(("setFanSpeed", target.fan_speed))
        if not actions:
            self._restored_by.pop(device, None)  # the restore is complete (or was not needed)
            return
        restored_by = self._restored_by.get(device)
        source: str = _LAYER_SOURCE.get(eff.layer) or restored_by or self._manual_source.get(device, "rule")
        if source not in SOURCES:
            source = "rule"  # a stored source this version does not know
        # One step at a time: the next one is planned from the state the device reports after this one
        # (a failed step must not be followed by the rest of a stale plan).
        action, value = actions[0]
        request = CommandRequest.create(device, action, value, source=source)
        self._reconciling.setdefault(device, set()).add(request.command_id)
        self._dirty.add(device)
        self._queue(*self.executor.submit(request, now))
        self._metrics.inc("gateway_reconciler_commands_total", 1, "commands the reconciler sent")
        log.info("reconciler.drive", device_id=device, layer=_LAYER_NAMES[eff.layer], power=target.power,
                 fan_speed=target.fan_speed, action=action, remaining_steps=len(actions) - 1)

    # ----------------------------------------------------------------------------------- the task

    def _queue(self, *items: Effect | StoreRecord) -> None:
        if items:
            self._effects.extend(items)
            self._idle.clear()
            self._wake.set()

    async def drained(self) -> None:
        """Wait until what was queued so far has been handed to the store (API answers after that)."""
        if self._effects:
            await self._idle.wait()

    def wake(self) -> None:
        """Re-evaluate now (after a test moved its clock, or a cron fire)."""
        self._schedules_due = True
        self._wake.set()

    async def run(self) -> None:
        self._running = True
        if self._scheduler is not None and not self._scheduler.running:
            self._scheduler.start()
        try:
            while True:
                await self._apply_effects()
                self._tick()
                if self._effects:
                    continue
                self._idle.set()
                delay = self._next_wakeup_delay()
                self._wake.clear()
                if self._effects:
                    continue
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the TaskGroup's cancel
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            self._running = False
            if self._scheduler is not None and self._scheduler.running:
                self._scheduler.shutdown(wait=False)

    async def flush_records(self) -> None:
        """At shutdown (task cancelled, intake stopped): store what is still queued, publish nothing."""
        while self._effects:
            item = self._effects.popleft()
            if isinstance(item, Send | Ignored):
                continue  # a command not sent now is re-sent from desired state after the restart
            try:
                await self._apply(item)
            except Exception:
                log.exception("control.flush_failed", effect=type(item).__name__)

    def _next_wakeup_delay(self) -> float | None:
        now = self._clock.now()
        times = [t for t in (
            self.executor.next_deadline(),
            self.desired.next_wakeup(now),
            self._next_transition,
            min((b.until for b in self._backoff.values() if b.until > now), default=None),
        ) if t is not None]
        # Capped: the sleep runs on the monotonic clock, the deadlines on the wall clock; when the wall clock
        # is stepped (NTP at boot on a board without an RTC, resume from suspend) we notice within a minute.
        if not times:
            return MAX_SLEEP_S
        return min(MAX_SLEEP_S, max(0.0, min(times) - now))

    def _tick(self) -> None:
        now = self._clock.now()
        self._queue(*self.executor.tick(now))
        if self._schedules_due or (self._next_transition is not None and now >= self._next_transition):
            self._schedules_due = False
            for device in sorted({s.device for s in self.schedules.values()} | set(self._open_runs)):
                self._evaluate_schedule(device, now)
            self._refresh_next_transition(now)
        for ended in self.desired.purge_expired(now):
            if ended.layer is Layer.PRECLEAN:
                run = self._preclean.get(ended.device)
                if run is not None:
                    self._emit_preclean_ended(ended.device, run, "expired", now)
            elif ended.layer is Layer.SCHEDULE:
                self._evaluate_schedule(ended.device, now)  # another overlapping window may take over
            self._layer_changed(ended.device, now, cause=_LAYER_SOURCE.get(ended.layer))
        for device, backoff in list(self._backoff.items()):
            if now >= backoff.until and device in self._dirty:
                self._reconcile(device, now)

    async def _apply_effects(self) -> None:
        while self._effects:
            item = self._effects.popleft()
            try:
                await self._apply(item)
            except asyncio.CancelledError:
                self._effects.appendleft(item)  # shutdown: flush_records() still stores it
                raise
            except Exception:
                # One failed effect (a full disk is retried by the writer itself) must not stop control.
                self._metrics.inc("gateway_control_errors_total", 1, "control effects that failed")
                log.exception("control.effect_failed", effect=type(item).__name__)

    async def _apply(self, item: Effect | StoreRecord) -> None:
        if isinstance(item, Send):
            try:
                ack = await self._send(item.command)
            except LinkError as exc:
                # Not sent: the attempt stays unanswered and the executor retries it at its deadline.
                log.warning("command.not_sent", command_id=item.command_id, device_id=item.command.device_id,
                            error=str(exc))
                return
            self._metrics.inc("gateway_commands_published_total", 1, "command messages sent to devices")
            if ack is not None:  # the link's reply is the acknowledgement (a Modbus write)
                await self.on_ack(item.command.device_id, ack, self._clock.now())
        elif isinstance(item, Audit):
            self._remember(item.record)
            await self._put(_audit_row(item.record))
        elif isinstance(item, StateReported):
            merged = self._state_reported(item.device, item.state, item.at)
            await self._put(RowWrite("device_state", {"device_id": item.device, "last_metrics": merged}))
        elif isinstance(item, Finished):
            self._finished(item.record)
            r = item.record
            await self._put(DeviceEvent(r.finished_at or self._clock.now(), r.device, "command.result", {
                "commandId": r.command_id, "action": r.action, "value": r.value, "source": r.source,
                "status": r.status.value, "attempts": r.attempts, "error": r.error, "state": r.state,
            }))
        elif isinstance(item, Ignored):
            self._metrics.inc("gateway_acks_ignored_total", 1, "acks no command waited for")
            log.warning("command.ack_ignored", device_id=item.device, command_id=item.command_id, reason=item.reason)
        else:
            await self._put(item)

    def _remember(self, record: CommandRecord) -> None:
        self._records[record.command_id] = record
        self._records.move_to_end(record.command_id)
        while len(self._records) > _REMEMBER_RECORDS:
            self._records.popitem(last=False)

    def _finished(self, record: CommandRecord) -> None:
        self._remember(record)
        for fut in self._waiters.pop(record.command_id, []):
            if not fut.done():
                fut.set_result(record)
        self._metrics.inc("gateway_commands_finished_total", 1, "commands finished", status=record.status.value)
        log.info("command.finished", device_id=record.device, command_id=record.command_id, action=record.action,
                 status=record.status.value, attempts=record.attempts, source=record.source)
        now = self._clock.now()
        device = record.device
        mine = self._reconciling.get(device)
        if mine is not None and record.command_id in mine:
            mine.discard(record.command_id)
            reached = record.status.value == "acked" and _reached(record, self._reported(device) or {})
            if reached:
                self._backoff.pop(device, None)
            else:
                # Failed, timed out, or acked without the device getting there: wait before driving it
                # again, doubling each time (a device that says "ok" and stays put must not be stormed).
                old = self._backoff.get(device)
                delay = min(old.delay * 2, self._settings.retry_backoff_max_seconds) if old else \
                    self._settings.retry_backoff_seconds
                self._backoff[device] = _Backoff(now + delay, delay)
                self._dirty.add(device)
                log.warning("reconciler.backoff", device_id=device, seconds=delay, status=record.status.value,
                            action=record.action)
        if device in self._dirty and self.executor.in_flight(device) is None and not self.executor.pending(device):
            self._reconcile(device, now)

