"""Pydantic models of what the REST API accepts: request bodies and query strings.

Field names are the JSON names (camelCase), so a validation error's location *is* the field the client
sent, and ``model_json_schema()`` is the schema the OpenAPI document publishes. Bodies are strict (a
``"3"`` or ``true`` is not a fan speed) and refuse unknown keys: a typo must not pass as a default.
Query strings arrive as text, so their models convert (lax mode) but still refuse unknown names.

Rules that need the control service's knowledge (day names, HH:MM windows, a command's value for its
action) are checked there too; these models catch what can be said about the shape alone.

The Praan air-purifier backend's request bodies are accepted beside ours, so its clients work unchanged:
its names (from the one table in gateway/web/praan_names.py) are alternative keys of the same fields, and
its ``day`` (one day per schedule) stands for ``days: [day]``. Giving both names of one field is refused
(which one would win would be a guess).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from gateway.control.desired import FAN_SPEED_MAX, FAN_SPEED_MIN
from gateway.control.schedules import SCHEDULE_FAN_MAX, SCHEDULE_FAN_MIN, ScheduleError, parse_days
from gateway.settings import DEVICE_ID_PATTERN
from gateway.web.praan_names import PRECLEAN, SCHEDULE, Resource

PRECLEAN_MINUTES_MAX = 24 * 60
DATA_LIMIT_DEFAULT = 100
DATA_LIMIT_MAX = 10_000
COMMANDS_LIMIT_DEFAULT = 50
COMMANDS_LIMIT_MAX = 1000

_HHMM_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldError(ValueError):
    """A rule across fields that still has one field to blame (a plain ValueError there has no location)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# The backend's clients send "deviceId"; the cloud RPC and older clients say "device". Both are accepted;
# sending both is refused as an unknown key (which one would win would be a guess). The alias must sit
# on the field itself (pydantic ignores it inside a union), hence a function rather than a type alias.
DeviceIdStr = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]


def _device_field(default: object = PydanticUndefined) -> Any:
    return Field(default, validation_alias=AliasChoices("deviceId", "device"),
                 description='Device id (the key "device" is accepted too).')


def _also(resource: Resource, ours: str, description: str, default: object = PydanticUndefined) -> Any:
    """A field the Praan backend's clients send under its own name (the resource's table says which)."""
    praan = resource.praan(ours)
    return Field(default, validation_alias=AliasChoices(ours, praan),
                 description=f'{description} (the key "{praan}" is accepted too).')


_DAY = SCHEDULE.praan("days")


def _one_day(data: Any) -> Any:
    """The Praan form's ``day`` (one day per schedule) as our ``days`` list."""
    if not isinstance(data, dict) or _DAY not in data:
        return data
    if "days" in data:
        raise FieldError(_DAY, f"give days (a list) or {_DAY} (one day), not both")
    day = data[_DAY]
    try:
        parse_days([day])
    except ScheduleError as exc:
        raise FieldError(_DAY, f"expected a day name (monday..sunday or Mon..Sun), got {day!r}") from exc
    return {**{k: v for k, v in data.items() if k != _DAY}, "days": [day]}


def _with_one_day(schema: dict[str, Any]) -> None:
    schema["properties"][_DAY] = {"type": "string", "description": 'One day ("monday", or "Mon"): the same as '
                                   '"days": [day] (the Praan backend\'s form). Give days or day.'}


def _hhmm(value: str) -> str:
    if not re.fullmatch(_HHMM_PATTERN, value):
        raise ValueError(f"expected HH:MM between 00:00 and 23:59, got {value!r}")
    return value


ScheduleFanSpeed = Annotated[int, Field(ge=SCHEDULE_FAN_MIN, le=SCHEDULE_FAN_MAX)]
HHMM = Annotated[
    str,
    AfterValidator(_hhmm),
    WithJsonSchema({"type": "string", "pattern": _HHMM_PATTERN, "description": "Local time HH:MM (gateway timezone)"}),
]
Days = Annotated[
    list[str],
    Field(min_length=1, max_length=7, description='Weekday names: "Mon".."Sun" (full names accepted).'),
]


class ScheduleCreate(Body):
    """A weekly window: from ``start`` to ``end`` on each of ``days`` (an end before the start crosses midnight)."""

    model_config = ConfigDict(json_schema_extra=_with_one_day)

    deviceId: DeviceIdStr = _device_field()
    days: Days
    start: HHMM = _also(SCHEDULE, "start", "Window start")
    end: HHMM = _also(SCHEDULE, "end", "Window end")
    fanSpeed: ScheduleFanSpeed
    enabled: bool = _also(SCHEDULE, "enabled", "Whether it runs", True)

    @model_validator(mode="before")
    @classmethod
    def _praan_day(cls, data: Any) -> Any:
        return _one_day(data)

    def control_body(self) -> dict[str, object]:
        """The control service's JSON form (it names the device ``device``)."""
        return {"device": self.deviceId, "days": list(self.days), "start": self.start, "end": self.end,
                "fanSpeed": self.fanSpeed, "enabled": self.enabled}


def _without_nulls(schema: dict[str, Any]) -> None:
    """Publish ``X`` rather than pydantic's ``X | null`` for fields that may be left out but never be null."""
    _with_one_day(schema)
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if isinstance(options, list):
            kept = [o for o in options if o != {"type": "null"}]
            if len(kept) == 1:
                del prop["anyOf"]
                prop.update(kept[0])
        prop.pop("default", None)


class ScheduleUpdate(Body):
    """A partial schedule: the fields given replace the stored ones. ``null`` is not a value here."""

    model_config = ConfigDict(json_schema_extra=_without_nulls)

    deviceId: DeviceIdStr | None = _device_field(None)
    days: Days | None = None
    start: HHMM | None = _also(SCHEDULE, "start", "Window start", None)
    end: HHMM | None = _also(SCHEDULE, "end", "Window end", None)
    fanSpeed: ScheduleFanSpeed | None = None
    enabled: bool | None = _also(SCHEDULE, "enabled", "Whether it runs", None)

    @model_validator(mode="before")
    @classmethod
    def _praan_day(cls, data: Any) -> Any:
        return _one_day(data)

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Optional only so a field may be left out; an explicit null would erase a required field.
        # (Field validators run for given values only, so the None defaults never get here.)
        if value is None:
            raise ValueError("may be left out, but not null")
        return value

    @model_validator(mode="after")
    def _something(self) -> ScheduleUpdate:
        if not self.model_fields_set:
            raise ValueError("nothing to update: give at least one of " + ", ".join(type(self).model_fields))
        return self

    def control_body(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in self.model_fields_set:
            out["device" if name == "deviceId" else name] = getattr(self, name)
        return out


class PrecleanStart(Body):
    """Run the device at ``fanSpeed`` for ``minutes``, over any schedule or manual setting; then restore."""

    deviceId: DeviceIdStr = _device_field()
    fanSpeed: ScheduleFanSpeed = _also(PRECLEAN, "fanSpeed", "Fan speed during the pre-clean")
    minutes: Annotated[int, Field(ge=1, le=PRECLEAN_MINUTES_MAX)] = _also(PRECLEAN, "minutes", "Length in minutes")


class PrecleanCancel(Body):
    deviceId: DeviceIdStr = _device_field()


class DeviceCommand(Body):
    """``setFanSpeed`` takes ``value`` 0-5; ``turnOn``/``turnOff`` take none. ``wait``: answer after the ack."""

    action: Literal["setFanSpeed", "turnOn", "turnOff"]
    value: Annotated[int, Field(ge=FAN_SPEED_MIN, le=FAN_SPEED_MAX)] | None = None
    wait: bool = True


# ------------------------------------------------------------------------------------------- queries


def parse_instant(value: object) -> object:
    """Epoch seconds (``1763800000``, ``1763800000.5``) or ISO 8601; a time without a zone is UTC."""
    if value is None or not isinstance(value, str):
        return value
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"expected epoch seconds or an ISO 8601 time, got {value!r}")
        return seconds
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected epoch seconds or an ISO 8601 time, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


_INSTANT_SCHEMA = {
    "oneOf": [
        {"type": "number", "description": "Unix epoch seconds"},
        {"type": "string", "format": "date-time", "description": "ISO 8601 (no zone: UTC)"},
    ]
}
Instant = Annotated[float | None, BeforeValidator(parse_instant), WithJsonSchema(_INSTANT_SCHEMA)]


class _Range(Query):
    from_: Instant = Field(None, alias="from", description="Start of the range (inclusive).")
    to: Instant = Field(None, description="End of the range (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise FieldError("from", "must not be after to")
        return self


class DataQuery(_Range):
    limit: Annotated[int, Field(ge=1, le=DATA_LIMIT_MAX, description="Rows at most (newest first).")] = (
        DATA_LIMIT_DEFAULT
    )
    resolution: Literal["raw", "auto", "hour", "day"] = Field(
        "raw", description="raw: the readings; hour/day: buckets of every metric (min, max, avg, count, last) "
                           "from the rollups; auto: hours for a range of up to a week, days beyond.")


class StatisticsQuery(_Range):
    """Without ``from``, the range is the last 24 hours before ``to`` (default: now)."""

    resolution: Literal["auto", "raw", "hour", "day"] = Field(
        "auto", description="auto: exact, from daily/hourly rollups and raw readings at the ends; raw: readings "
                            "only; hour/day: rollups only, the range widened to whole buckets.")


class ScheduleListQuery(Query):
    deviceId: Annotated[str | None, Field(pattern=DEVICE_ID_PATTERN)] = Field(
        None, validation_alias=AliasChoices("deviceId", "device"),
        description='Only this device\'s schedules (the key "device" is accepted too).')


class CommandsQuery(Query):
    limit: Annotated[int, Field(ge=1, le=COMMANDS_LIMIT_MAX, description="Rows at most (newest first).")] = (
        COMMANDS_LIMIT_DEFAULT
    )
