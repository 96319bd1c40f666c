"""JSON-RPC 2.0 for commands from the cloud: parsing, validation, dispatch. No I/O of its own."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
DEVICE_OFFLINE = -32000
COMMAND_TIMEOUT = -32001

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class Params(BaseModel):
    """Base of method parameter models: unknown parameters are errors, named in the answer."""

    model_config = ConfigDict(extra="forbid")


class NoParams(Params):
    pass


@dataclass(frozen=True, slots=True)
class Request:
    id_key: str | None  # the id as JSON text (dedupe key); None for a notification
    id: Any
    method: str
    params: dict[str, Any]


Handler = Callable[[Any], Awaitable[Any]]


def parse_request(payload: bytes) -> Request:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: {exc}") from None
    if not isinstance(obj, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: not an object")
    req_id = obj.get("id")
    if "id" in obj and not (req_id is None or (isinstance(req_id, str | int) and not isinstance(req_id, bool))):
        raise RpcError(INVALID_REQUEST, "Invalid Request: id must be a string, a number or null")
    id_key = _dumps(req_id) if "id" in obj else None
    if obj.get("jsonrpc") != "2.0":
        raise _with_id(RpcError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"'), id_key, req_id)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise _with_id(RpcError(INVALID_REQUEST, 'Invalid Request: "method" must be a string'), id_key, req_id)
    params = obj.get("params", {})
    if not isinstance(params, dict):
        raise _with_id(RpcError(INVALID_PARAMS, "Invalid params: params must be an object"), id_key, req_id)
    return Request(id_key, req_id, method, params)


class _IdentifiedError(RpcError):
    def __init__(self, inner: RpcError, id_key: str | None, req_id: Any) -> None:
        super().__init__(inner.code, inner.message, inner.data)
        self.id_key = id_key
        self.id = req_id


def _with_id(err: RpcError, id_key: str | None, req_id: Any) -> RpcError:
    return _IdentifiedError(err, id_key, req_id)


def error_response(err: RpcError, req_id: Any = None) -> dict[str, Any]:
    req_id = getattr(err, "id", req_id)
    error: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.data is not None:
        error["data"] = err.data
    return {"jsonrpc": "2.0", "id": req_id, "error": error}


def result_response(req_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "result": result}


class Dispatcher:
    """Methods by name, each with a pydantic model of its params."""

    def __init__(self) -> None:
        self._methods: dict[str, tuple[type[Params], Handler]] = {}

    def register(self, name: str, params: type[Params], handler: Handler) -> None:
        self._methods[name] = (params, handler)

    @property
    def methods(self) -> list[str]:
        return sorted(self._methods)

    async def call(self, request: Request) -> dict[str, Any]:
        entry = self._methods.get(request.method)
        if entry is None:
            return error_response(RpcError(METHOD_NOT_FOUND, f"Method not found: {request.method}"), request.id)
        model, handler = entry
        try:
            params = model.model_validate(request.params)
        except ValidationError as exc:
            problems = [
                {"field": ".".join(str(p) for p in e["loc"]) or "(params)", "message": e["msg"]}
                for e in exc.errors()
            ]
            first = problems[0]
            err = RpcError(INVALID_PARAMS, f"Invalid params: {first['field']}: {first['message']}", problems)
            return error_response(err, request.id)
        try:
            return result_response(request.id, await handler(params))
        except RpcError as err:
            return error_response(err, request.id)


def encode(response: dict[str, Any]) -> bytes:
    return _dumps(response).encode()
