"""The REST API's request plumbing: reading a body or query against its model, and the two middlewares.

Every failure becomes `{"error": {status, message, field?, problems?}}` (:func:`errors`): domain errors map
to statuses here, in one place, and nothing unexpected reaches a client as a traceback. A state-changing
request must be JSON and, when it names an Origin, come from this API's own origin (:func:`same_origin_json`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pydantic import BaseModel, ValidationError

from gateway.control.command_model import CommandError, CommandQueueFull
from gateway.control.schedules import ScheduleError
from gateway.core.errors import ConflictError, NotFoundError
from gateway.web.aiohttp_web import web
from gateway.web.bodies import FieldError

log = structlog.get_logger(__name__)


class ApiError(Exception):
    """An answer other than success, raised by handlers and the input parsers."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 problems: list[dict[str, str | None]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.problems = problems


async def read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    return validate_body(model, await read_object(request))


async def read_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (400 when it is not one)."""
    raw = await request.read()
    if not raw.strip():
        raise ApiError(400, "a JSON object is required as the request body")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, and an integer of > 4,300 digits
        raise ApiError(400, f"invalid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deep") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def validate_body(model: type[BaseModel], data: dict[str, Any]) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


def read_query(request: web.Request, model: type[BaseModel]) -> BaseModel:
    values: dict[str, str] = {}
    for key, value in request.query.items():
        if key in values:
            raise ApiError(400, "given more than once", key)
        values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> ApiError:
    problems: list[dict[str, str | None]] = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            field: str | None = cause.field
            message = cause.message
        else:
            field = _field_name(err["loc"])
            message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            message = message.removeprefix("Value error, ")
        problems.append({"field": field, "message": message})
    fields = {p["field"] for p in problems}
    one_field = next(iter(fields)) if len(fields) == 1 else None
    text = "; ".join(f"{p['field']}: {p['message']}" if p["field"] else str(p["message"]) for p in problems)
    return ApiError(400, text, one_field, problems if len(problems) > 1 else None)


def _field_name(loc: tuple[int | str, ...]) -> str | None:
    """``("days", 0)`` -> ``days[0]`` (the control service names list items the same way)."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else part)
    return name or None


def error_response(status: int, message: str, field: str | None = None,
           problems: list[dict[str, str | None]] | None = None, headers: dict[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"status": status, "message": message}
    if field:
        error["field"] = field
    if problems:
        error["problems"] = problems
    return web.json_response({"error": error}, status=status, headers=headers)


def _without_field_prefix(message: str, field: str) -> str:
    return message.removeprefix(f"{field}: ")


_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@web.middleware
async def same_origin_json(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
    """A page on another site must not be able to change anything here through a visitor's browser.

    Browsers send a cross-site POST with a `text/plain` or form body without asking first (no CORS
    preflight), so a state-changing request with a body must say `application/json` (415 otherwise), and one
    that names an `Origin` must come from this API's own origin (403 otherwise). Tools such as curl send no
    Origin.
    """
    if request.method in _STATE_CHANGING:
        origin = request.headers.get("Origin")
        if origin is not None and _host_of(origin) != request.host.lower():
            raise ApiError(403, f"cross-origin request from {origin!r} refused")
        if request.can_read_body and request.content_type != "application/json":
            raise ApiError(415, f"the body must be application/json, got {request.content_type!r}")
    return await handler(request)


def _host_of(origin: str) -> str | None:
    scheme, sep, rest = origin.partition("://")
    return rest.rstrip("/").lower() if sep and scheme in ("http", "https") else None


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    """Every failure becomes `{"error": {status, message, field?}}`; the unexpected ones are logged."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.field, exc.problems)
    except (CommandError, ScheduleError) as exc:
        return error_response(400, _without_field_prefix(str(exc), exc.field), exc.field)
    except NotFoundError as exc:
        return error_response(404, str(exc))
    except ConflictError as exc:
        return error_response(409, str(exc))
    except CommandQueueFull as exc:
        return error_response(429, str(exc))
    except web.HTTPException as exc:
        # aiohttp's own answers: no such route (404), wrong method (405 keeps its Allow header), body too big
        if exc.status < 400:
            raise
        allow = exc.headers.get("Allow")
        return error_response(exc.status, exc.reason, headers={"Allow": allow} if allow else None)
    except Exception:
        log.exception("api.unhandled_error", method=request.method, path=request.path)
        return error_response(500, "internal error (logged by the gateway)")
