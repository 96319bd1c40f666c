"""The local REST API (aiohttp): the air-purifier backend's routes, served by the gateway itself.

One route table (:data:`ROUTES`) builds both the router and the OpenAPI document. Each route's body and
query are validated by its pydantic models before the handler runs, so a handler sees only valid input
and a 400 names the field at fault; failures become JSON errors in gateway/web/requests.py.

Reads of stored data (readings, audit log, schedule runs) go through the API's own read-only SQLite
connection (WAL: they never wait for the writer); everything live comes from the control service.

Every route here but /health and /api/openapi.json is a Praan path: its route names the Praan resource it
answers, and :meth:`Call.answer` renders the answer in Praan's names when the request asked for them
(gateway/web/praan_names.py: the ``X-Field-Names`` header, else a body that used a Praan name).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiosqlite
import structlog
from pydantic import BaseModel

from gateway.control.command_model import CommandRecord, CommandStatus
from gateway.control.schedules import Schedule
from gateway.control.service import Controller
from gateway.core.clock import Clock
from gateway.core.errors import NotFoundError
from gateway.settings import ApiSection
from gateway.settings_retention import RetentionSection
from gateway.store import read_queries
from gateway.web.aiohttp_web import web
from gateway.web.bodies import (
    CommandsQuery,
    DeviceCommand,
    PrecleanCancel,
    PrecleanStart,
    ScheduleCreate,
    ScheduleUpdate,
)
from gateway.web.openapi import Reply, Route, ref
from gateway.web.praan_names import (
    COMMAND,
    COMMAND_PAGE,
    DEVICE_LIST,
    DEVICE_STATE,
    NAMES_HEADER,
    PRECLEAN,
    READINGS,
    SCHEDULE,
    to_praan,
    wants_praan,
)
from gateway.web.requests import ApiError, errors, read_object, read_query, same_origin_json, validate_body
from gateway.web.views import command_json, device_control_json, preclean_json, schedule_json

log = structlog.get_logger(__name__)

SOURCE = "api"  # the audit log's `source` for everything done through this API...
AUDIT_SOURCE = web.RequestKey("edge_gateway_audit_source", str)  # ...unless the login middleware set another
# HTTP status of a command's answer: the device did not answer in time (504) or refused it (502), as a
# gateway in front of it; still under way (202). Acked and cancelled: 200. The body is the record either way.
COMMAND_STATUS = {CommandStatus.PENDING: 202, CommandStatus.SENT: 202, CommandStatus.TIMEOUT: 504,
                  CommandStatus.FAILED: 502}

M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------------------- context


@dataclass(slots=True)
class ApiContext:
    """What handlers use, reached through the app's typed key (no globals, one per ApiServer)."""

    settings: ApiSection
    controller: Controller
    devices: Callable[[], list[dict[str, Any]]]
    device_state: Callable[[str], dict[str, Any] | None]
    health: Callable[[], dict[str, Any]]
    clock: Clock
    openapi: Callable[[], dict[str, Any]]  # the OpenAPI document (built at its first request: ~0.3 MB kept)
    retention: RetentionSection = field(default_factory=RetentionSection)  # where history reads raw or rollups
    db: aiosqlite.Connection | None = None

    def reader(self) -> aiosqlite.Connection:
        if self.db is None:
            raise RuntimeError("the API's database connection is not open (ApiServer.start() not run)")
        return self.db


CONTEXT = web.AppKey("edge_gateway_api", ApiContext)


@dataclass(frozen=True, slots=True)
class Call:
    """One request, with its body and query already validated against the route's models."""

    request: web.Request
    route: Route
    ctx: ApiContext
    parsed_body: BaseModel | None
    parsed_query: BaseModel | None
    praan_names: bool = False  # answer in the Praan backend's field names (a Praan path that was asked to)

    @property
    def controller(self) -> Controller:
        return self.ctx.controller

    @property
    def source(self) -> str:
        return self.request.get(AUDIT_SOURCE) or SOURCE

    def answer(self, data: Any, status: int = 200) -> web.Response:
        """The JSON answer, in Praan's names when this call asked for them (one vocabulary per answer)."""
        if self.route.praan is None:
            return _json(data, status)
        if self.praan_names:
            data = to_praan(self.route.praan, data)
        return web.json_response(data, status=status, headers={"Vary": NAMES_HEADER})

    def body(self, model: type[M]) -> M:
        if not isinstance(self.parsed_body, model):  # the route table and its handler disagree: our bug
            raise TypeError(f"route body is {type(self.parsed_body).__name__}, handler expects {model.__name__}")
        return self.parsed_body

    def query(self, model: type[M]) -> M:
        if not isinstance(self.parsed_query, model):
            raise TypeError(f"route query is {type(self.parsed_query).__name__}, handler expects {model.__name__}")
        return self.parsed_query

    def device(self) -> str:
        """The path's deviceId, which must be a configured device (else 404)."""
        device = self.request.match_info[self.route.placeholder("deviceId")]
        if not self.controller.known(device):
            raise NotFoundError("device", device)
        return device

    def schedule_id(self) -> int:
        text = self.request.match_info[self.route.placeholder("scheduleId")]
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            raise ApiError(400, f"expected a schedule id (a whole number >= 1), got {text!r}", "scheduleId")
        return int(text)


Handler = Callable[[Call], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


# ---------------------------------------------------------------------------------------- handlers


def schedule_view(controller: Controller, schedule: Schedule) -> dict[str, object]:
    return schedule_json(schedule, controller.schedule_history(schedule.id))


async def create_schedule(call: Call) -> web.StreamResponse:
    body = call.body(ScheduleCreate)
    schedule = await call.controller.create_schedule(body.control_body())
    return call.answer(schedule_view(call.controller, schedule), 201)


async def list_schedules(call: Call) -> web.StreamResponse:
    schedules = call.controller.schedules_for(call.device())
    return call.answer([schedule_view(call.controller, s) for s in sorted(schedules, key=lambda s: s.id)])


async def schedule_detail(call: Call) -> web.StreamResponse:
    schedule_id = call.schedule_id()
    schedule = call.controller.get_schedule(schedule_id)
    runs = await read_queries.schedule_runs(call.ctx.reader(), schedule_id)
    return call.answer({**schedule_view(call.controller, schedule), "runs": runs})


async def update_schedule(call: Call) -> web.StreamResponse:
    schedule_id = call.schedule_id()
    body = call.body(ScheduleUpdate)
    schedule = await call.controller.update_schedule(schedule_id, body.control_body())
    return call.answer(schedule_view(call.controller, schedule))


async def delete_schedule(call: Call) -> web.StreamResponse:
    await call.controller.delete_schedule(call.schedule_id())
    return web.Response(status=204)


async def start_preclean(call: Call) -> web.StreamResponse:
    body = call.body(PrecleanStart)
    _known(call, body.deviceId)
    status = await call.controller.start_preclean(body.deviceId, body.fanSpeed, body.minutes, call.source)
    return call.answer(preclean_json(status), 201)


async def cancel_preclean(call: Call) -> web.StreamResponse:
    body = call.body(PrecleanCancel)
    _known(call, body.deviceId)
    return call.answer(preclean_json(await call.controller.cancel_preclean(body.deviceId, call.source)))


async def preclean_status(call: Call) -> web.StreamResponse:
    return call.answer(preclean_json(call.controller.preclean_status(call.device())))


def _known(call: Call, device: str) -> None:
    # A device named in a body is checked here too, so its 404 does not depend on the controller's order.
    if not call.controller.known(device):
        raise NotFoundError("device", device)


async def device_latest(call: Call) -> web.StreamResponse:
    device = call.device()
    return call.answer({"device": device, "data": await read_queries.latest_reading(call.ctx.reader(), device)})


async def device_state(call: Call) -> web.StreamResponse:
    device = call.device()
    state = call.ctx.device_state(device)
    if state is None:
        raise NotFoundError("device", device)
    return call.answer({**state, **device_control_json(call.controller.device_control(device))})


async def device_commands(call: Call) -> web.StreamResponse:
    device = call.device()
    q = call.query(CommandsQuery)
    rows = await read_queries.command_log(call.ctx.reader(), device, limit=q.limit)
    return call.answer({"device": device, "count": len(rows), "data": rows})


async def list_devices(call: Call) -> web.StreamResponse:
    return call.answer(call.ctx.devices())


async def device_command(call: Call) -> web.StreamResponse:
    device = call.device()
    body = call.body(DeviceCommand)
    controller = call.controller
    record: CommandRecord = controller.submit_command(device, body.action, body.value, call.source)
    online = bool((call.ctx.device_state(device) or {}).get("online"))
    # Waiting on an offline device would only hold the client for the full wait: its command is queued
    # (the record's note says so) and is sent when it comes back. A note on a fresh record means exactly
    # that the executor found the device not (yet) listening, even if its status just said online.
    queued = record.status is CommandStatus.PENDING and record.note is not None
    if body.wait and online and not queued and not record.status.finished:
        record = await controller.wait_finished(record.command_id, call.ctx.settings.command_wait_seconds)
    return call.answer(command_json(record), COMMAND_STATUS.get(record.status, 200))


async def health(call: Call) -> web.StreamResponse:
    return _json(call.ctx.health())


async def openapi(call: Call) -> web.StreamResponse:
    return _json(call.ctx.openapi())


# ------------------------------------------------------------------------------------- route table

_SCHEDULES = "schedules"
_PRECLEAN = "pre-clean"
_DEVICES = "devices"
_GATEWAY = "gateway"


def _list_of(name: str) -> dict[str, Any]:
    return {"type": "array", "items": ref(name)}


def _page_of(name: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"device": {"type": "string"}, "count": {"type": "integer"},
                                             "data": _list_of(name)}}


ROUTES: tuple[Route, ...] = (
    Route("POST", "/api/schedule", create_schedule, "Create a weekly schedule", _SCHEDULES,
          {201: Reply("The schedule as stored", "Schedule")}, body=ScheduleCreate, errors=(404,), praan=SCHEDULE),
    Route("GET", "/api/schedule/detail/{scheduleId}", schedule_detail, "A schedule and its execution history",
          _SCHEDULES, {200: Reply("The schedule, with `runs`: its last 50 starts/ends, newest first", {
              "allOf": [ref("Schedule"), {"type": "object", "properties": {"runs": _list_of("ScheduleRun")}}]})},
          praan=SCHEDULE),
    # One path, two meanings of its last segment (see Route.aliases): a device for GET, a schedule otherwise.
    Route("GET", "/api/schedule/{id}", list_schedules, "Schedules of a device (id: a device id)", _SCHEDULES,
          {200: Reply("The device's schedules by id", _list_of("Schedule"))}, aliases={"id": "deviceId"},
          praan=SCHEDULE),
    Route("PUT", "/api/schedule/{id}", update_schedule, "Change a schedule (id: a schedule id)", _SCHEDULES,
          {200: Reply("The schedule as stored", "Schedule")}, body=ScheduleUpdate, aliases={"id": "scheduleId"},
          description="The fields given replace the stored ones; the others stay.", praan=SCHEDULE),
    Route("DELETE", "/api/schedule/{id}", delete_schedule, "Delete a schedule (id: a schedule id)", _SCHEDULES,
          {204: Reply("Deleted; a window in effect ends now")}, aliases={"id": "scheduleId"}, praan=SCHEDULE),
    Route("POST", "/api/preclean", start_preclean, "Start (or replace) a pre-clean", _PRECLEAN,
          {201: Reply("The pre-clean's status", "PrecleanStatus")}, body=PrecleanStart, errors=(404,), praan=PRECLEAN),
    Route("POST", "/api/preclean/cancel", cancel_preclean, "Cancel the running pre-clean", _PRECLEAN,
          {200: Reply("The status after the cancel (inactive); lower layers take over", "PrecleanStatus")},
          body=PrecleanCancel, errors=(404, 409), praan=PRECLEAN),
    Route("GET", "/api/preclean/status/{deviceId}", preclean_status, "Pre-clean status of a device", _PRECLEAN,
          {200: Reply("Active or not, speed, end and time remaining", "PrecleanStatus")}, praan=PRECLEAN),
    Route("GET", "/api/device/list/all", list_devices, "Configured devices", _DEVICES,
          {200: Reply("Every configured device with its connection state", _list_of("Device"))}, praan=DEVICE_LIST),
    Route("GET", "/api/device/{deviceId}/latest", device_latest, "The newest stored reading", _DEVICES,
          {200: Reply("`data` is the newest reading, or null when the device never sent one", {
              "type": "object", "properties": {"device": {"type": "string"},
                                               "data": {"oneOf": [ref("Reading"), {"type": "null"}]}}})},
          praan=READINGS),
    Route("GET", "/api/device/{deviceId}/state", device_state, "Live state and control state of a device",
          _DEVICES, {200: Reply("Connection, last metrics, desired state, its layers and commands under way", {
              "type": "object", "properties": {
                  "device": {"type": "string"}, "online": {"type": "boolean"}, "lastSeen": {"type": ["number", "null"]},
                  "ts": {"type": ["number", "null"]}, "metrics": {"type": "object"},
                  "desired": {"type": ["object", "null"]}, "layers": {"type": "object"},
                  "inFlight": {"oneOf": [ref("Command"), {"type": "null"}]}, "pending": _list_of("Command")}})},
          praan=DEVICE_STATE),
    Route("GET", "/api/device/{deviceId}/commands", device_commands, "Command audit log of a device", _DEVICES,
          {200: Reply("Commands, newest first", _page_of("Command"))}, query=CommandsQuery, praan=COMMAND_PAGE),
    Route("POST", "/api/device/{deviceId}/command", device_command, "Send a command to a device", _DEVICES,
          {200: Reply("Acked (or cancelled meanwhile): the audit record with the device's state", "Command"),
           202: Reply("Accepted, not finished: pending (queued while the device is offline) or sent", "Command"),
           502: Reply("The device refused the command (its ack said error): the audit record, status failed",
                      "Command"),
           504: Reply("No ack after every attempt: the audit record, status timeout", "Command")},
          body=DeviceCommand, errors=(429,), praan=COMMAND,
          description="With `wait` (default) and an online device, the answer waits for the device's ack "
                      "(at most api.command_wait_seconds). A command also sets the manual layer."),
    Route("GET", "/health", health, "Gateway health", _GATEWAY, {200: Reply("Health of the gateway's parts")}),
    Route("GET", "/api/openapi.json", openapi, "This document", _GATEWAY,
          {200: Reply("OpenAPI 3.1", {"type": "object"})}),
)


# ------------------------------------------------------------------------------ input and errors


def _endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    handler: Handler = route.handler

    # A body with one of these keys comes from a Praan client (the keys our own bodies never use).
    praan_keys = (frozenset() if route.praan is None or route.body is None
                  else route.praan.request_keys(route.body.model_fields))

    async def endpoint(request: web.Request) -> web.StreamResponse:
        data = await read_object(request) if route.body is not None else None
        praan = False
        if route.praan is not None:
            try:
                praan = wants_praan(request.headers.get(NAMES_HEADER), data, praan_keys)
            except ValueError as exc:
                raise ApiError(400, str(exc), NAMES_HEADER) from None
        body = validate_body(route.body, data) if route.body is not None and data is not None else None
        query = read_query(request, route.query) if route.query is not None else None
        return await handler(Call(request, route, request.app[CONTEXT], body, query, praan))

    endpoint.__name__ = route.handler.__name__
    return endpoint


# ------------------------------------------------------------------------------------------ server


def build_app(ctx: ApiContext, routes: tuple[Route, ...] = ROUTES) -> web.Application:
    app = web.Application(middlewares=[errors, same_origin_json])
    app[CONTEXT] = ctx
    for route in routes:
        app.router.add_route(route.method, route.path, _endpoint(route), name=route.handler.__name__)
    return app
