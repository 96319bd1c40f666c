"""The JSON payloads of CONTRACT section 1 that every device kind on the LAN broker shares.

The JSON object check (size, UTF-8, numbers SQLite can store), the generic sensor reading
`{"ts", "metrics"}`, acknowledgements on `device/{id}/ack` and commands on `device/{id}/command`.
Pure functions: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from gateway.core.device_commands import Ack, OutgoingCommand
from gateway.core.errors import PayloadError
from gateway.core.models import MetricValue, Reading
from gateway.core.timestamps import normalise_ts

MAX_PAYLOAD_BYTES = 64 * 1024
_INT_LIMIT = 2**63 - 1  # SQLite's integers; a larger one would overflow on the way to the database
# A \uD800-\uDFFF escape: JSON allows a lone surrogate, UTF-8 (and so SQLite) cannot store one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        # Decode explicitly: json.loads(bytes) would also guess UTF-16/32, which the contract does not allow.
        text = payload.decode("utf-8")
        obj = _DECODER.decode(text)
        if _SURROGATE_ESCAPE.search(payload):  # rare: only then pay for a second look
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise PayloadError("not storable: a string holds a lone UTF-16 surrogate (\\uD800-\\uDFFF)") from None
    except UnicodeDecodeError:
        raise PayloadError("not UTF-8") from None
    except RecursionError:
        raise PayloadError("not storable: JSON nested too deep") from None
    except (OverflowError, ValueError) as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise PayloadError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
        raise PayloadError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"not a JSON object (got {_json_type(obj)})")
    return obj


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999 parses to inf: not storable as JSON
        raise PayloadError(f"not JSON: {text} is out of range for a number")
    return value


def _bounded_int(text: str) -> int:
    value = int(text)
    if not -_INT_LIMIT <= value <= _INT_LIMIT:
        raise PayloadError(f"not JSON: {text[:24]}{'...' if len(text) > 24 else ''} is out of range for a number")
    return value


def _reject_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON (and SQLite's JSON functions) do not.
    raise PayloadError(f"not JSON: {name} is not a JSON value")


def decode_generic_reading(device_id: str, obj: dict[str, Any], received_at: float) -> Reading:
    """`{"ts": ..., "metrics": {name: number | bool}}`; other top-level fields are kept in `extra`."""
    raw_metrics = obj["metrics"]
    if not isinstance(raw_metrics, dict):
        raise PayloadError(f"metrics: expected an object, got {_json_type(raw_metrics)}")
    if not raw_metrics:
        raise PayloadError("metrics: empty")
    metrics: dict[str, MetricValue] = {}
    for name, value in raw_metrics.items():
        if isinstance(value, bool):
            metrics[name] = value
        elif isinstance(value, int | float):
            if not math.isfinite(value):
                raise PayloadError(f"metrics.{name}: {value!r} is not a finite number")
            metrics[name] = value
        else:
            raise PayloadError(f"metrics.{name}: expected a number or boolean, got {_json_type(value)}")
    ts = received_at
    extra: dict[str, Any] = {}
    for key, value in obj.items():
        if key in ("ts", "timestamp"):
            ts = normalise_ts(value, key)
        elif key != "metrics":
            extra[key] = value
    return Reading(device_id, ts, metrics, received_at, extra)


# One decoder for every payload: json.loads with hooks builds a new decoder and scanner per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def decode_ack(payload: bytes | str | Mapping[str, Any]) -> Ack:
    """Validate an ack: raises PayloadError (quarantine it) with the reason.

    ``{"commandId", "status": "ok"|"error", "error"?: str, "state"?: {"fanSpeed": 0..5, "powerOn": bool}}``.
    An ``error`` status without a reason is accepted (reason recorded as such); unknown fields are kept.
    """
    obj: object = payload
    if isinstance(payload, bytes | str):
        try:
            obj = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise PayloadError(f"ack: not JSON ({exc})") from None
    if not isinstance(obj, Mapping):
        raise PayloadError(f"ack: expected a JSON object, got {type(obj).__name__}")
    cid = obj.get("commandId")
    if not isinstance(cid, str) or not cid:
        raise PayloadError(f"ack.commandId: expected a non-empty string, got {cid!r}")
    status = obj.get("status")
    if status not in ("ok", "error"):
        raise PayloadError(f"ack.status: expected 'ok' or 'error', got {status!r}")
    error = obj.get("error")
    if error is not None and not isinstance(error, str):
        raise PayloadError(f"ack.error: expected a string, got {type(error).__name__}")
    if status == "error" and not error:
        error = "device reported an error without a reason"
    state = obj.get("state")
    if state is not None:
        state = _check_ack_state(state)
    extra = {k: v for k, v in obj.items() if k not in ("commandId", "status", "error", "state")}
    return Ack(cid, status == "ok", error if status == "error" else None, state, extra)


def _check_ack_state(state: object) -> dict[str, Any]:
    if not isinstance(state, Mapping):
        raise PayloadError(f"ack.state: expected an object, got {type(state).__name__}")
    fan = state.get("fanSpeed")
    if fan is not None and (
        isinstance(fan, bool)
        or not isinstance(fan, int | float)
        or not math.isfinite(fan)
        or not float(fan).is_integer()
        or not 0 <= fan <= 5
    ):
        raise PayloadError(f"ack.state.fanSpeed: expected a whole number 0..5, got {fan!r}")
    power = state.get("powerOn")
    if power is not None and not isinstance(power, bool):
        raise PayloadError(f"ack.state.powerOn: expected true/false, got {power!r}")
    out = dict(state)
    if fan is not None:
        out["fanSpeed"] = int(fan)
    return out


def encode_command(command: OutgoingCommand) -> bytes:
    """`{"commandId", "action", "value", "ts"}`; `ts` is the first send, so every retry is byte-identical."""
    body = {"commandId": command.command_id, "action": command.command.action, "value": command.command.value,
            "ts": command.issued_at}
    return json.dumps(body, separators=(",", ":")).encode()
