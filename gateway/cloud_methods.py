"""The cloud's JSON-RPC methods (CONTRACT section 2) on top of the gateway's services.

Errors: -32602 names the bad field (also an unknown device or schedule), -32000 device offline (the
command is queued as desired state and applied when the device returns; `data` is its audit record),
-32001 command timeout, -32002 the device refused the command, -32003 too many commands queued.

`command.get` gives a recent command's audit record by its id (the gateway keeps the latest 2,048 in
memory; older ones are in the REST API's audit log); `command.cancel` cancels one still pending or sent
and answers its record with ``cancelled`` true, or false (and the record as it finished) when it was done.
History (`device.readings`, `device.statistics`, `device.series`) answers as the REST API's routes do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import Field

from gateway.control.command_model import CommandError, CommandQueueFull, CommandStatus
from gateway.control.schedules import ScheduleError
from gateway.control.service import Controller
from gateway.core.errors import ConflictError, NotFoundError
from gateway.settings_retention import RetentionSection
from gateway.store import history, read_queries
from gateway.uplink.rpc import COMMAND_TIMEOUT, DEVICE_OFFLINE, INVALID_PARAMS, Dispatcher, NoParams, Params, RpcError
from gateway.web.views import command_json, preclean_json

COMMAND_FAILED = -32002
QUEUE_FULL = -32003


class DeviceOnly(Params):
    device: str


class FanSpeedParams(Params):
    device: str
    value: int = Field(strict=True)


class PrecleanStartParams(Params):
    device: str
    fanSpeed: int = Field(strict=True)
    minutes: int = Field(strict=True)


class ScheduleCreateParams(Params):
    device: str
    days: list[str]
    start: str
    end: str
    fanSpeed: int = Field(strict=True)
    enabled: bool = True


class ScheduleUpdateParams(Params):
    id: int = Field(strict=True)
    device: str | None = None
    days: list[str] | None = None
    start: str | None = None
    end: str | None = None
    fanSpeed: int | None = Field(default=None, strict=True)
    enabled: bool | None = None


class ScheduleIdParams(Params):
    id: int = Field(strict=True)


class CommandIdParams(Params):
    commandId: str = Field(min_length=1)


def _invalid(field: str, message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params: {field}: {message}", [{"field": field, "message": message}])


def _guard(handler: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """Map the services' errors to JSON-RPC errors."""

    async def call(params: Any) -> Any:
        try:
            return await handler(params)
        except (CommandError, ScheduleError) as exc:
            raise _invalid(exc.field, str(exc).split(": ", 1)[-1]) from None
        except NotFoundError as exc:
            field = {"schedule": "id", "command": "commandId"}.get(exc.kind, "device")
            raise _invalid(field, str(exc)) from None
        except CommandQueueFull as exc:
            raise RpcError(QUEUE_FULL, str(exc)) from None

    return call


def register_control_methods(dispatcher: Dispatcher, controller: Controller, *, wait_seconds: float) -> None:
    async def command(device: str, action: str, value: int | None) -> dict[str, Any]:
        record = controller.submit_command(device, action, value, "cloud")
        if not controller.executor.is_online(device):
            raise RpcError(DEVICE_OFFLINE, "device offline: command queued, applied when it comes back",
                           command_json(record))
        record = await controller.wait_finished(record.command_id, wait_seconds)
        body = command_json(record)
        if record.status is CommandStatus.ACKED:
            return body
        if record.status is CommandStatus.TIMEOUT:
            raise RpcError(COMMAND_TIMEOUT, f"command timeout: {record.error}", body)
        if record.status is CommandStatus.FAILED:
            raise RpcError(COMMAND_FAILED, f"device refused the command: {record.error}", body)
        if not record.status.finished:  # still waiting (the device went offline meanwhile)
            raise RpcError(DEVICE_OFFLINE, "no answer yet: command queued, applied when the device is back", body)
        raise RpcError(COMMAND_FAILED, f"command {record.status.value}: {record.error}", body)

    async def command_get(p: CommandIdParams) -> dict[str, Any]:
        record = controller.record(p.commandId)
        if record is None:
            raise NotFoundError("command", p.commandId)
        return command_json(record)

    async def command_cancel(p: CommandIdParams) -> dict[str, Any]:
        try:
            return {**command_json(await controller.cancel_command(p.commandId, "cloud")), "cancelled": True}
        except ConflictError:  # it finished first
            return {**await command_get(p), "cancelled": False}

    async def set_fan_speed(p: FanSpeedParams) -> dict[str, Any]:
        return await command(p.device, "setFanSpeed", p.value)

    async def turn_on(p: DeviceOnly) -> dict[str, Any]:
        return await command(p.device, "turnOn", None)

    async def turn_off(p: DeviceOnly) -> dict[str, Any]:
        return await command(p.device, "turnOff", None)

    async def preclean_start(p: PrecleanStartParams) -> dict[str, Any]:
        return preclean_json(await controller.start_preclean(p.device, p.fanSpeed, p.minutes, "cloud"))

    async def preclean_cancel(p: DeviceOnly) -> dict[str, Any]:
        try:
            return {**preclean_json(await controller.cancel_preclean(p.device, "cloud")), "cancelled": True}
        except ConflictError:
            return {**preclean_json(controller.preclean_status(p.device)), "cancelled": False}  # nothing ran

    async def preclean_status(p: DeviceOnly) -> dict[str, Any]:
        return preclean_json(controller.preclean_status(p.device))

    async def schedule_list(p: DeviceOnly) -> list[dict[str, object]]:
        return [s.to_json() for s in controller.schedules_for(p.device)]

    async def schedule_create(p: ScheduleCreateParams) -> dict[str, object]:
        return (await controller.create_schedule(p.model_dump())).to_json()

    async def schedule_update(p: ScheduleUpdateParams) -> dict[str, object]:
        changes = p.model_dump(exclude_none=True, exclude={"id"})
        return (await controller.update_schedule(p.id, changes)).to_json()

    async def schedule_delete(p: ScheduleIdParams) -> dict[str, Any]:
        await controller.delete_schedule(p.id)
        return {"id": p.id, "deleted": True}

    for name, model, handler in (
        ("device.setFanSpeed", FanSpeedParams, set_fan_speed),
        ("device.turnOn", DeviceOnly, turn_on),
        ("device.turnOff", DeviceOnly, turn_off),
        ("command.get", CommandIdParams, command_get),
        ("command.cancel", CommandIdParams, command_cancel),
        ("preclean.start", PrecleanStartParams, preclean_start),
        ("preclean.cancel", DeviceOnly, preclean_cancel),
        ("preclean.status", DeviceOnly, preclean_status),
        ("schedule.list", DeviceOnly, schedule_list),
        ("schedule.create", ScheduleCreateParams, schedule_create),
        ("schedule.update", ScheduleUpdateParams, schedule_update),
        ("schedule.delete", ScheduleIdParams, schedule_delete),
    ):
        dispatcher.register(name, model, _guard(handler))


class DeviceParams(Params):
    device: str


def register_gateway_methods(
    dispatcher: Dispatcher,
    *,
    now: Callable[[], float],
    version: str,
    devices: Callable[[], list[dict[str, Any]]],
    device_state: Callable[[str], dict[str, Any] | None],
) -> None:
    """`gateway.ping`, `gateway.devices` and `device.state`."""

    async def ping(_: NoParams) -> dict[str, Any]:
        return {"pong": True, "ts": now(), "version": version}

    async def list_devices(_: NoParams) -> list[dict[str, Any]]:
        return devices()

    async def state(params: DeviceParams) -> dict[str, Any]:
        found = device_state(params.device)
        if found is None:
            raise RpcError(INVALID_PARAMS, f"Invalid params: device: unknown device {params.device!r}")
        return found

    dispatcher.register("gateway.ping", NoParams, ping)
    dispatcher.register("gateway.devices", NoParams, list_devices)
    dispatcher.register("device.state", DeviceParams, state)


HISTORY_SPAN_S = 24 * 3600.0  # without `from`: the last 24 hours before `to` (default: now)
BUCKETS_SPAN_S = 7 * 24 * 3600.0  # bucketed readings without `from`: the last week
SERIES_MAX_POINTS = 10_000


class _HistoryRange(Params):
    device: str
    from_: float | None = Field(None, alias="from")
    to: float | None = None


class ReadingsParams(_HistoryRange):
    limit: Annotated[int, Field(ge=1, le=10_000, strict=True)] = 100
    resolution: Literal["raw", "auto", "hour", "day"] = "raw"  # not raw: buckets of every metric


class StatisticsParams(_HistoryRange):
    resolution: Literal["auto", "raw", "hour", "day"] = "auto"


class SeriesParams(StatisticsParams):
    metric: Annotated[str, Field(min_length=1, max_length=64)]
    step: Annotated[int, Field(ge=1, le=366 * 86400, strict=True)] = 3600


def register_history_methods(
    dispatcher: Dispatcher,
    reader: history.LazyReader,
    *,
    known: Callable[[str], bool],
    now: Callable[[], float],
    retention: RetentionSection,
) -> None:
    """`device.readings` (newest first), `device.statistics` and `device.series` (gateway/store/history.py)."""

    def checked(p: _HistoryRange, *, default_span: float | None) -> tuple[float | None, float | None]:
        if not known(p.device):
            raise _invalid("device", f"unknown device {p.device!r}")
        end, start = p.to, p.from_
        if default_span is not None:
            end = end if end is not None else now()
            start = start if start is not None else end - default_span
        if start is not None and end is not None and start > end:
            raise _invalid("from", "must not be after to")
        return start, end

    async def readings(p: ReadingsParams) -> dict[str, Any]:
        if p.resolution == "raw":
            start, end = checked(p, default_span=None)
            rows = await read_queries.readings(await reader.conn(), p.device, start=start, end=end, limit=p.limit)
            return {"device": p.device, "count": len(rows), "data": rows}
        start, end = checked(p, default_span=BUCKETS_SPAN_S)
        assert start is not None and end is not None
        found = await history.buckets(await reader.conn(), p.device, start, end, p.resolution, p.limit,
                                      history.Windows.of(retention, now()))
        return {"device": p.device, **found, "count": len(found["data"])}

    async def statistics(p: StatisticsParams) -> dict[str, Any]:
        start, end = checked(p, default_span=HISTORY_SPAN_S)
        assert start is not None and end is not None
        found = await history.statistics(await reader.conn(), p.device, start, end, p.resolution,
                                         history.Windows.of(retention, now()))
        return {"device": p.device, **found}

    async def series(p: SeriesParams) -> dict[str, Any]:
        start, end = checked(p, default_span=HISTORY_SPAN_S)
        assert start is not None and end is not None
        if (end - start) / p.step > SERIES_MAX_POINTS:
            raise _invalid("step", f"more than {SERIES_MAX_POINTS:,} points: use a larger step")
        try:
            found = await history.series(await reader.conn(), p.device, p.metric, start, end, p.step, p.resolution,
                                         history.Windows.of(retention, now()))
        except ValueError as exc:
            raise _invalid("step", str(exc)) from None
        return {"device": p.device, "metric": p.metric, **found}

    dispatcher.register("device.readings", ReadingsParams, readings)
    dispatcher.register("device.statistics", StatisticsParams, statistics)
    dispatcher.register("device.series", SeriesParams, series)
