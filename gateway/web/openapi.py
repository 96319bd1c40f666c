"""The route table's type and the OpenAPI 3.1 document generated from it.

The app's router and the document are built from the *same* list of :class:`Route` (see
gateway/web/api.py), so a route cannot exist without being documented, nor the reverse. Request
schemas come from the pydantic models that validate the bodies and query strings; response schemas
are written here by hand (they describe the controller's and the store's JSON, which are dicts).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from gateway.settings import DEVICE_ID_PATTERN
from gateway.web.praan_names import NAMES_HEADER, Resource, describe, praan_schema

OPENAPI_VERSION = "3.1.0"

# Handlers take the parsed call (see gateway/web/api.py); typed loosely here to keep this module free of it.
Handler = Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Reply:
    """One documented answer: a description and, for JSON answers, a schema (a component name or inline)."""

    description: str
    schema: str | dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # aiohttp syntax, which is also OpenAPI's: /api/schedule/{scheduleId}
    handler: Handler
    summary: str
    tag: str
    replies: Mapping[int, Reply]
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    description: str = ""
    errors: Sequence[int] = field(default=())  # error statuses besides 400/500 (those follow from the route)
    # Placeholder -> what it holds (a key of PATH_PARAMS) when the two differ. OpenAPI forbids two paths
    # that differ only in a placeholder's name, and the backend has GET /api/schedule/{deviceId} beside
    # PUT /api/schedule/{scheduleId}: both are /api/schedule/{id}, each operation saying what `id` is.
    aliases: Mapping[str, str] = field(default_factory=dict)
    # A Praan path (one the Praan backend's clients call): what its answer is, for answers in Praan's names.
    praan: Resource | None = None

    @property
    def path_params(self) -> dict[str, str]:
        """Placeholder -> kind, in path order."""
        return {name: self.aliases.get(name, name) for name in re.findall(r"{(\w+)}", self.path)}

    def placeholder(self, kind: str) -> str:
        for name, param_kind in self.path_params.items():
            if param_kind == kind:
                return name
        raise KeyError(f"{self.method} {self.path} has no {kind} in its path")


PATH_PARAMS: dict[str, dict[str, Any]] = {
    "deviceId": {"description": "Device id", "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN}},
    "scheduleId": {"description": "Schedule id", "schema": {"type": "integer", "minimum": 1}},
    "hubId": {"description": "Device id of a hub", "schema": {"type": "string", "pattern": DEVICE_ID_PATTERN}},
    "commandId": {"description": "Command id (the audit record's commandId)", "schema": {"type": "string"}},
}

_ERROR_TEXT = {
    400: "Invalid request: the body, query or path names the field at fault when it is one field",
    404: "Unknown device, schedule, hub or command",
    409: "Conflicts with the current state",
    429: "Too many commands already waiting for this device",
    500: "Unexpected error (logged by the gateway)",
}

_NUM = {"type": ["number", "null"]}
_STR = {"type": ["string", "null"]}

COMPONENTS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["status", "message"],
                "properties": {
                    "status": {"type": "integer"},
                    "message": {"type": "string"},
                    "field": {"type": "string", "description": "The one field at fault, when there is one"},
                    "problems": {
                        "type": "array",
                        "description": "Every problem, when there are several",
                        "items": {"type": "object", "properties": {"field": _STR, "message": {"type": "string"}}},
                    },
                },
            }
        },
    },
    "Schedule": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "deviceId": {"type": "string"},
            "days": {"type": "array", "items": {"enum": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]}},
            "start": {"type": "string"},
            "end": {"type": "string"},
            "fanSpeed": {"type": "integer"},
            "enabled": {"type": "boolean"},
            "lastExecuted": {"type": ["string", "null"], "format": "date-time",
                             "description": "When a window of it last started (ISO 8601 UTC; Praan's field)"},
            "executionHistory": {
                "type": "array", "description": "Its latest starts and ends, newest first (at most 10; Praan's field)",
                "items": {"type": "object", "properties": {
                    "executedAt": {"type": "string", "format": "date-time"}, "phase": {"enum": ["start", "end"]},
                    "fanSpeed": {"type": "integer"}}},
            },
        },
    },
    "ScheduleRun": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "scheduleId": {"type": "integer"},
            "device": {"type": "string"},
            "phase": {"enum": ["start", "end"]},
            "windowStart": {"type": "number"},
            "windowEnd": {"type": "number"},
            "fanSpeed": {"type": "integer"},
            "at": {"type": "number"},
        },
    },
    "Command": {
        "type": "object",
        "properties": {
            "commandId": {"type": "string"},
            "device": {"type": "string"},
            "action": {"enum": ["setFanSpeed", "turnOn", "turnOff"]},
            "value": {"type": ["integer", "null"]},
            "source": {"type": "string", "description": "panel, api, cloud: a person's or the cloud's command; "
                                                         "reconcile: an automatic one"},
            "cause": {"type": ["string", "null"], "enum": ["manual", "schedule", "preclean", "rule", None],
                      "description": "For source reconcile: the layer that made the gateway send it (a return to "
                                     "the manual setting after an override ended names the override)"},
            "status": {"enum": ["pending", "sent", "acked", "failed", "timeout", "cancelled"]},
            "attempts": {"type": "integer"},
            "createdAt": {"type": "number"},
            "sentAt": _NUM,
            "lastSentAt": _NUM,
            "finishedAt": _NUM,
            "error": _STR,
            "state": {"type": ["object", "null"], "description": "The device's reported state from its ack"},
            "note": _STR,
            "attemptLog": {"type": "array", "description": "One entry per attempt, in order", "items": {
                "type": "object", "properties": {
                    "attempt": {"type": "integer"}, "sentAt": {"type": "number"},
                    "result": {"type": ["string", "null"],
                               "enum": ["no-ack", "not-sent", "acked", "failed", "cancelled", None]},
                    "error": _STR}}},
        },
    },
    "PrecleanStatus": {
        "type": "object",
        "properties": {
            "device": {"type": "string"},
            "active": {"type": "boolean"},
            "fanSpeed": {"type": ["integer", "null"]},
            "startedAt": _NUM,
            "endsAt": _NUM,
            "remainingSeconds": {"type": "number"},
            "source": {"type": "string", "description": "Who started it (when active)"},
        },
    },
    "Reading": {
        "type": "object",
        "properties": {
            "ts": {"type": "number", "description": "The reading's own time (epoch s)"},
            "receivedAt": {"type": "number"},
            "metrics": {"type": "object", "additionalProperties": {"type": ["number", "boolean"]}},
        },
    },
    "Device": {
        "type": "object",
        "properties": {"id": {"type": "string"}, "kind": {"type": "string"}, "online": {"type": "boolean"},
                       "lastSeen": _NUM},
    },
}


def ref(name: str) -> dict[str, str]:
    if name not in COMPONENTS:
        raise KeyError(f"no component schema {name!r}")
    return {"$ref": f"#/components/schemas/{name}"}


def openapi_document(routes: Sequence[Route], *, title: str, version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = dict(COMPONENTS)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = _operation(route, schemas)
        methods = paths.setdefault(route.path, {})
        key = route.method.lower()
        if key in methods:
            raise ValueError(f"route {route.method} {route.path} is listed twice")
        methods[key] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "Local REST API of the edge gateway. JSON in, JSON out; errors are "
                           '{"error": {"status", "message", "field"?}}. No login yet: it listens on '
                           "127.0.0.1 unless the installer says otherwise. The paths marked x-praan-names are "
                           "the Praan air-purifier backend's: its request names are accepted beside ours (each "
                           "body field's description names its other key), and each answer uses one vocabulary: "
                           f"ours, or Praan's when the {NAMES_HEADER} header says praan or (without the header) "
                           "the body used a Praan name. Praan's names: " + describe() + ".",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _operation(route: Route, schemas: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        op["description"] = route.description
    params: list[dict[str, Any]] = []
    for name, kind in route.path_params.items():
        if kind not in PATH_PARAMS:
            raise ValueError(f"{route.path}: path parameter {name!r} has no schema in PATH_PARAMS")
        params.append({"name": name, "in": "path", "required": True, **PATH_PARAMS[kind]})
    if route.query is not None:
        params += _query_params(route.query)
    if route.praan is not None:
        params.append(_names_header(route.praan))
        op["x-praan-names"] = route.praan.all_names()
    if params:
        op["parameters"] = params
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _model_ref(route.body, schemas)}},
        }
    responses: dict[str, Any] = {}
    for status, reply in sorted(route.replies.items()):
        responses[str(status)] = _response(reply, route.praan, schemas)
    errors = set(route.errors) | {500}
    kinds = set(route.path_params.values())
    if route.body is not None or route.query is not None or "scheduleId" in kinds:
        errors.add(400)
    if kinds & {"deviceId", "scheduleId", "commandId"}:
        errors.add(404)
    for status in sorted(errors):
        responses[str(status)] = _response(Reply(_ERROR_TEXT[status], "Error"))
    op["responses"] = responses
    return op


def _response(reply: Reply, praan: Resource | None = None, schemas: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        schema = ref(reply.schema) if isinstance(reply.schema, str) else reply.schema
        if praan is not None and schemas is not None:
            theirs = praan_schema(praan, schema, schemas)
            if theirs != schema:  # ours, or the same in Praan's names (see the X-Field-Names parameter)
                schema = {"anyOf": [schema, theirs]}
        out["content"] = {"application/json": {"schema": schema}}
    return out


def _names_header(praan: Resource) -> dict[str, Any]:
    names = praan.all_names()
    differ = ", ".join(f"{theirs} for {ours}" for ours, theirs in names.items() if ours != theirs)
    return {"name": NAMES_HEADER, "in": "header", "required": False,
            "description": "The answer's field names: praan (the Praan backend's: " + (differ or "no field differs")
                           + ") or ours. Without it: Praan's when the body used a Praan name, else ours.",
            "schema": {"enum": ["ours", "praan"]}}


def _model_ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    # Nested models (none today) arrive under $defs: hoist them to the components, where refs point.
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        description = prop.pop("description", None)
        if description:
            param["description"] = description
        prop.pop("title", None)
        param["schema"] = prop
        out.append(param)
    return out
