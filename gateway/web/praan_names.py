"""The Praan air-purifier backend's field names beside ours: one table per resource, read both ways.

The REST API's Praan paths (the routes that backend's clients call; each names its :class:`Resource` in
the route table) accept Praan's request names beside ours (gateway/web/bodies.py takes every alternative
key from here) and answer in one vocabulary, never two names for one field: ours unless the request asks
for Praan's (:func:`wants_praan`: the ``X-Field-Names`` header, else a body that used a Praan name).
:func:`to_praan` renders an answer in Praan's names and :func:`praan_schema` its OpenAPI schema; the
README's table lists the same entries (a test compares them).

Only names this repository can source are here (issue 13 and the README: Praan's request bodies, and the
answer fields ``willEndAt``, ``lastExecuted``, ``executionHistory``); every other field keeps our name in
both vocabularies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

OURS = "ours"
PRAAN = "praan"
NAMES_HEADER = "X-Field-Names"  # "praan" or "ours": which vocabulary the answer uses

# What a value converter returns when Praan's form cannot hold the value: the field keeps our name.
KEEP_OURS: Any = object()

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_PRAAN_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def iso_utc(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC with milliseconds (``2026-11-23T08:00:00.000Z``), as a JS Date prints."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _one_day(days: Any) -> Any:
    """Our ``days: ["Mon"]`` as Praan's ``day: "monday"``; a schedule of several days keeps ``days``."""
    if isinstance(days, list) and len(days) == 1 and days[0] in _DAYS:
        return _PRAAN_DAYS[_DAYS.index(days[0])]
    return KEEP_OURS


@dataclass(frozen=True, slots=True)
class Name:
    """One field's two names. ``to_praan`` converts the answer's value where Praan's form differs."""

    ours: str
    praan: str
    note: str = ""
    to_praan: Callable[[Any], Any] | None = None
    praan_schema: Mapping[str, Any] | None = None  # the OpenAPI schema of Praan's value, where it differs
    sometimes_ours: bool = False  # to_praan may answer KEEP_OURS (the field then keeps our name)


@dataclass(frozen=True)
class Resource:
    """The names of one kind of object; ``nested``: keys whose object (or list of them) is another resource."""

    title: str
    names: tuple[Name, ...] = ()
    nested: Mapping[str, Resource] = field(default_factory=dict)

    @cached_property
    def by_ours(self) -> dict[str, Name]:
        return {n.ours: n for n in self.names}

    def praan(self, ours: str) -> str:
        """The Praan name of our field ``ours`` (bodies.py's alternative keys)."""
        return self.by_ours[ours].praan

    def request_keys(self, fields: Iterable[str]) -> frozenset[str]:
        """The Praan-only keys a body with these (our) fields may carry: one of them means a Praan client."""
        ours = set(fields)
        return frozenset(n.praan for n in self.names if n.ours in ours and n.praan != n.ours)

    def all_names(self) -> dict[str, str]:
        """Ours -> Praan's, nested resources included (OpenAPI's ``x-praan-names``)."""
        out = {n.ours: n.praan for n in self.names}
        for sub in self.nested.values():
            out.update(sub.all_names())
        return out


_DEVICE = Name("device", "deviceId", "the device an answer is about (our answers say device, except a schedule's)")
_DATE_TIME = {"type": ["string", "null"], "format": "date-time"}

COMMAND = Resource("command", (_DEVICE,))
PRECLEAN = Resource("pre-clean", (
    _DEVICE,
    Name("fanSpeed", "fanMode"),
    Name("minutes", "duration", "minutes; requests only"),
    Name("endsAt", "willEndAt", "ISO 8601 UTC instead of epoch seconds", iso_utc, _DATE_TIME),
))
SCHEDULE_RUN = Resource("schedule run", (_DEVICE,))
SCHEDULE = Resource("schedule", (
    Name("days", "day", 'one day ("monday"): a schedule per day; a schedule of several days answers days',
         _one_day, {"type": "string", "enum": list(_PRAAN_DAYS)}, sometimes_ours=True),
    Name("start", "startTime"),
    Name("end", "endTime"),
    Name("enabled", "isActive"),
), {"runs": SCHEDULE_RUN})
DEVICE_LIST = Resource("device list")
DEVICE_STATE = Resource("device state", (_DEVICE,), {"inFlight": COMMAND, "pending": COMMAND})
COMMAND_PAGE = Resource("command log", (_DEVICE,), {"data": COMMAND})
READINGS = Resource("readings", (_DEVICE,))
STATISTICS = Resource("statistics", (_DEVICE,))

RESOURCES = (SCHEDULE, SCHEDULE_RUN, PRECLEAN, COMMAND, COMMAND_PAGE, DEVICE_STATE, DEVICE_LIST, READINGS,
             STATISTICS)


def wants_praan(header: str | None, body_keys: Iterable[str] | None, praan_keys: frozenset[str]) -> bool:
    """Whether to answer in Praan's names: the header says so (either way), else the body used a Praan name."""
    if header is not None:
        value = header.strip().lower()
        if value not in (OURS, PRAAN):
            raise ValueError(f'expected "{OURS}" or "{PRAAN}", got {header!r}')
        return value == PRAAN
    return body_keys is not None and not praan_keys.isdisjoint(body_keys)


def to_praan(resource: Resource, data: Any) -> Any:
    """Our answer (an object or a list of them) in Praan's names; fields Praan has no name for keep ours."""
    if isinstance(data, list):
        return [to_praan(resource, item) for item in data]
    if not isinstance(data, dict):
        return data
    out: dict[str, Any] = {}
    for key, value in data.items():
        sub = resource.nested.get(key)
        if sub is not None:
            value = to_praan(sub, value)
        name = resource.by_ours.get(key)
        if name is None:
            out[key] = value
            continue
        converted = value if name.to_praan is None else name.to_praan(value)
        if converted is KEEP_OURS:
            out[key] = value
        else:
            out[name.praan] = converted
    if len(out) != len(data):  # a Praan name met a key of ours: two fields would share one name
        raise RuntimeError(f"{resource.title}: Praan names collide with {sorted(data)}")
    return out


def praan_schema(resource: Resource, schema: Mapping[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """Our answer's JSON schema in Praan's names. A component it refers to gets a Praan twin in
    ``components`` (``Praan`` + its name) when the names differ there."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        component = ref.rsplit("/", 1)[1]
        twin = f"Praan{component}"
        if twin not in components:
            renamed = praan_schema(resource, components[component], components)
            if renamed == components[component]:
                return dict(schema)
            components[twin] = renamed
        return {"$ref": f"#/components/schemas/{twin}"}
    out = dict(schema)
    if isinstance(schema.get("items"), Mapping):
        out["items"] = praan_schema(resource, schema["items"], components)
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            out[key] = [praan_schema(resource, s, components) for s in schema[key]]
    if isinstance(schema.get("properties"), Mapping):
        props: dict[str, Any] = {}
        for key, prop in schema["properties"].items():
            sub = resource.nested.get(key)
            if sub is not None:
                prop = praan_schema(sub, prop, components)
            name = resource.by_ours.get(key)
            if name is None or name.sometimes_ours:
                props[key] = prop
            if name is not None:
                props[name.praan] = {**(name.praan_schema or prop), **({"description": name.note} if name.note else {})}
        out["properties"] = props
    return out


def mapping_rows() -> list[tuple[Name, list[str]]]:
    """Every renamed field once, with the resources that carry it: the README's table and OpenAPI's text."""
    rows: dict[int, tuple[Name, list[str]]] = {}
    for resource in RESOURCES:
        for name in resource.names:
            rows.setdefault(id(name), (name, []))[1].append(resource.title)
    return list(rows.values())


def describe() -> str:
    """The table as one line of text (OpenAPI's info.description)."""
    return "; ".join(f"{name.praan} for our {name.ours} ({', '.join(where)}{': ' + name.note if name.note else ''})"
                     for name, where in mapping_rows())
