"""REST routes beside api.py's (registered in server.py): every schedule at once, and one command by its id.

``GET /api/schedule`` lists all schedules (``?deviceId=`` for one device's), in the same form as the
Praan-path ``GET /api/schedule/{deviceId}``. ``GET /api/command/{commandId}`` gives a command's audit
record (live while it is under way, else from the stored audit log) with one entry per attempt;
``POST /api/command/{commandId}/cancel`` cancels one still pending or sent (409 once it finished).
"""

from __future__ import annotations

from gateway.core.errors import ConflictError, NotFoundError
from gateway.store import read_queries
from gateway.web.aiohttp_web import web
from gateway.web.api import Call, schedule_view
from gateway.web.bodies import ScheduleListQuery
from gateway.web.openapi import Reply, Route, ref
from gateway.web.views import command_json


async def all_schedules(call: Call) -> web.StreamResponse:
    q = call.query(ScheduleListQuery)
    controller = call.controller
    schedules = controller.all_schedules() if q.deviceId is None else \
        sorted(controller.schedules_for(q.deviceId), key=lambda s: s.id)
    return web.json_response([schedule_view(controller, s) for s in schedules])


def _command_id(call: Call) -> str:
    return call.request.match_info[call.route.placeholder("commandId")]


async def command_detail(call: Call) -> web.StreamResponse:
    command_id = _command_id(call)
    record = call.controller.record(command_id)
    if record is not None:
        return web.json_response(command_json(record))
    stored = await read_queries.command(call.ctx.reader(), command_id)
    if stored is None:
        raise NotFoundError("command", command_id)
    return web.json_response(stored)


async def cancel_command(call: Call) -> web.StreamResponse:
    command_id = _command_id(call)
    try:
        record = await call.controller.cancel_command(command_id, call.source)
    except NotFoundError:
        stored = await read_queries.command(call.ctx.reader(), command_id)
        if stored is None:
            raise
        raise ConflictError(f"command {command_id} already finished ({stored['status']})") from None
    return web.json_response(command_json(record))


CONTROL_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/schedule", all_schedules, "Every schedule (or one device's)", "schedules",
          {200: Reply("Schedules by id", {"type": "array", "items": ref("Schedule")})}, query=ScheduleListQuery,
          errors=(404,)),
    Route("GET", "/api/command/{commandId}", command_detail, "A command's audit record", "devices",
          {200: Reply("The record, with attemptLog: one entry per attempt", "Command")}),
    Route("POST", "/api/command/{commandId}/cancel", cancel_command, "Cancel a command still under way", "devices",
          {200: Reply("The record, cancelled; a person's command leaves the manual setting as it was before it",
                      "Command")}, errors=(409,)),
)
