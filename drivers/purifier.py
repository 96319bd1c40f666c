"""The MQTT air purifier (CONTRACT section 1): its reading forms, value ranges, commands and acks.

Readings come in the flat purifier form (validated field by field against PURIFIER_FIELDS) or the generic
`{"ts", "metrics"}` form; commands are setFanSpeed 0-5, turnOn and turnOff, sent as the contract's JSON.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from drivers import mqtt_json
from gateway.core.device_commands import Ack, DeviceCommand, OutgoingCommand, SetFanSpeed
from gateway.core.errors import PayloadError
from gateway.core.models import MetricValue, Reading
from gateway.core.timestamps import normalise_ts

# field -> (kind, minimum, maximum); None means unbounded on that side
_NUMBER = "number"
_INT = "int"
_BOOL = "bool"
PURIFIER_FIELDS: dict[str, tuple[str, float | None, float | None]] = {
    "temperature": (_NUMBER, -40.0, 85.0),
    "humidity": (_NUMBER, 0.0, 100.0),
    "pm1": (_NUMBER, 0.0, None),
    "pm25": (_NUMBER, 0.0, None),
    "pm10": (_NUMBER, 0.0, None),
    "sound": (_NUMBER, 0.0, None),
    "voc": (_NUMBER, 0.0, None),
    "fanSpeed": (_INT, 0, 5),
    "powerOn": (_BOOL, None, None),
    "networkStrength": (_NUMBER, 0.0, 100.0),
}
_TIME_FIELDS = ("timestamp", "ts")
FAN_SPEED_MIN, FAN_SPEED_MAX = 0, 5


class PurifierDriver:
    kind: ClassVar[str] = "purifier"
    transport: ClassVar[str] = "mqtt"

    def decode_reading(self, device_id: str, payload: bytes, received_at: float) -> Reading:
        obj = mqtt_json.parse_object(payload)
        if "metrics" in obj:
            return mqtt_json.decode_generic_reading(device_id, obj, received_at)
        return decode_purifier_reading(device_id, obj, received_at)

    def decode_ack(self, payload: bytes) -> Ack:
        return mqtt_json.decode_ack(payload)

    def encode_command(self, command: OutgoingCommand) -> bytes:
        return mqtt_json.encode_command(command)

    def check_command(self, command: DeviceCommand) -> None:
        if isinstance(command, SetFanSpeed) and not FAN_SPEED_MIN <= command.value <= FAN_SPEED_MAX:
            span = f"{FAN_SPEED_MIN}..{FAN_SPEED_MAX}"
            raise ValueError(f"setFanSpeed needs a whole number {span}, got {command.value!r}")


def decode_purifier_reading(device_id: str, obj: dict[str, Any], received_at: float) -> Reading:
    """The flat form: known fields are validated metrics; an unknown field with a number or boolean (a newer
    firmware's sensor) is a metric too, so the cloud's copy of the reading carries it as the local one does;
    other unknown fields (a firmware version string) are kept in `extra`, locally only."""
    metrics: dict[str, MetricValue] = {}
    extra: dict[str, Any] = {}
    ts = received_at
    known = False
    for key, value in obj.items():
        spec = PURIFIER_FIELDS.get(key)
        if spec is None:
            if key in _TIME_FIELDS:
                ts = normalise_ts(value, key)
            elif isinstance(value, (int, float)) and (isinstance(value, int) or math.isfinite(value)):
                metrics[key] = value  # (bool is an int; JSON has no NaN here: the parser refused it)
            else:
                extra[key] = value
            continue
        metrics[key] = _check(key, value, spec)
        known = True
    if not known:
        raise PayloadError("no known purifier metric in the payload")
    return Reading(device_id, ts, metrics, received_at, extra)


def _check(key: str, value: object, spec: tuple[str, float | None, float | None]) -> MetricValue:
    kind, low, high = spec
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise PayloadError(f"{key}: expected true/false, got {_type(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{key}: expected a number, got {_type(value)}")
    if kind == _INT and not (isinstance(value, int) or float(value).is_integer()):
        raise PayloadError(f"{key}: expected a whole number, got {value!r}")
    if not math.isfinite(value):
        raise PayloadError(f"{key}: {value!r} is not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        raise PayloadError(f"{key}: {value!r} out of range {_range(low, high)}")
    return int(value) if kind == _INT else value


def _range(low: float | None, high: float | None) -> str:
    if high is None:
        return f">= {low:g}"
    return f"{low:g}..{high:g}" if low is not None else f"<= {high:g}"


def _type(value: object) -> str:
    return "null" if value is None else type(value).__name__
