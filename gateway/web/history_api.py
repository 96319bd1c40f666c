"""The REST API's history routes: stored readings (or buckets of them), statistics over a range and bucketed
series for charts, each reading raw readings, hourly or daily rollups as the range and `resolution` say
(gateway/store/history.py). Readings and statistics are Praan paths (answers in Praan's names on request,
gateway/web/praan_names.py); the series is ours."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from gateway.store import history, read_queries
from gateway.web.aiohttp_web import web
from gateway.web.api import Call, _json, _page_of
from gateway.web.bodies import DataQuery, FieldError, Instant, Query, StatisticsQuery
from gateway.web.openapi import Reply, Route
from gateway.web.praan_names import READINGS, STATISTICS
from gateway.web.requests import ApiError

STATISTICS_DEFAULT_SPAN_S = 24 * 3600.0
DATA_BUCKETS_DEFAULT_SPAN_S = 7 * 24 * 3600.0
SERIES_DEFAULT_SPAN_S = 24 * 3600.0
SERIES_MAX_POINTS = 10_000
_DEVICES = "devices"
_STEP_TEXT = "Seconds per point, aligned to the epoch (UTC); a whole number of hours reads rollups."
_RESOLUTION_TEXT = ("auto: exact, from daily/hourly rollups and raw readings at the ends; raw: readings only; "
                    "hour/day: rollups only, the range widened to whole buckets.")


class SeriesQuery(Query):
    """Without ``from``, the range is the last 24 hours before ``to`` (default: now)."""

    metric: Annotated[str, Field(min_length=1, max_length=64, description="The metric's name, e.g. pm25.")]
    from_: Instant = Field(None, alias="from", description="Start of the range (inclusive).")
    to: Instant = Field(None, description="End of the range (inclusive).")
    step: Annotated[int, Field(ge=1, le=366 * 86400, description=_STEP_TEXT)] = 3600
    resolution: Literal["auto", "raw", "hour", "day"] = Field("auto", description=_RESOLUTION_TEXT)

    @model_validator(mode="after")
    def _ordered(self) -> SeriesQuery:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise FieldError("from", "must not be after to")
        if self.resolution in ("hour", "day") and self.step % (3600 if self.resolution == "hour" else 86400):
            raise FieldError("step", f"must be a whole number of {self.resolution}s for resolution {self.resolution}")
        return self


def _range(call: Call, start: float | None, end: float | None, span: float) -> tuple[float, float]:
    end = end if end is not None else call.ctx.clock.now()
    start = start if start is not None else end - span
    if start > end:  # only possible with a `from` in the future and no `to`
        raise ApiError(400, "must not be after to (default: now)", "from")
    return start, end


def _windows(call: Call) -> history.Windows:
    return history.Windows.of(call.ctx.retention, call.ctx.clock.now())


async def device_data(call: Call) -> web.StreamResponse:
    device = call.device()
    q = call.query(DataQuery)
    head = {"device": device, "from": q.from_, "to": q.to, "limit": q.limit}
    if q.resolution == "raw":
        rows = await read_queries.readings(call.ctx.reader(), device, start=q.from_, end=q.to, limit=q.limit)
        return call.answer({**head, "count": len(rows), "data": rows})
    start, end = _range(call, q.from_, q.to, DATA_BUCKETS_DEFAULT_SPAN_S)
    found = await history.buckets(call.ctx.reader(), device, start, end, q.resolution, q.limit, _windows(call))
    return call.answer({**head, **found, "count": len(found["data"])})


async def device_statistics(call: Call) -> web.StreamResponse:
    device = call.device()
    q = call.query(StatisticsQuery)
    start, end = _range(call, q.from_, q.to, STATISTICS_DEFAULT_SPAN_S)
    stats = await history.statistics(call.ctx.reader(), device, start, end, q.resolution, _windows(call))
    return call.answer({"device": device, **stats})


async def device_series(call: Call) -> web.StreamResponse:
    device = call.device()
    q = call.query(SeriesQuery)
    start, end = _range(call, q.from_, q.to, SERIES_DEFAULT_SPAN_S)
    if (end - start) / q.step > SERIES_MAX_POINTS:
        raise ApiError(400, f"more than {SERIES_MAX_POINTS:,} points: use a larger step", "step")
    found = await history.series(call.ctx.reader(), device, q.metric, start, end, q.step, q.resolution,
                                 _windows(call))
    return _json({"device": device, "metric": q.metric, **found})


_NUMBER = {"type": "number"}
_RANGE_PROPS: dict[str, Any] = {
    "device": {"type": "string"}, "from": _NUMBER, "to": _NUMBER,
    "resolution": {"enum": ["auto", "raw", "hour", "day"]},
}

_BUCKET = {"type": "object", "properties": {
    "ts": {"type": "integer", "description": "The bucket's start (epoch s)"}, "readings": {"type": "integer"},
    "metrics": {"type": "object", "additionalProperties": {"type": "object", "properties": {
        "min": _NUMBER, "max": _NUMBER, "avg": _NUMBER, "count": {"type": "integer"}, "last": _NUMBER}}}}}

_BUCKETS = {"type": "object", "properties": {**_RANGE_PROPS, "count": {"type": "integer"},
                                             "data": {"type": "array", "items": _BUCKET}}}

HISTORY_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/device/{deviceId}/data", device_data, "Stored readings of a device", _DEVICES,
          {200: Reply("Readings in the range by their own time, newest first; with a resolution other than raw, "
                      "buckets of every metric instead (`resolution` says which)",
                      {"oneOf": [_page_of("Reading"), _BUCKETS]})},
          query=DataQuery, praan=READINGS,
          description="Without `from`, bucketed history covers the last 7 days before `to` (default: now)."),
    Route("GET", "/api/device/{deviceId}/statistics", device_statistics, "Min/max/avg per metric over a range",
          _DEVICES, {200: Reply("Per numeric metric: min, max, avg and count (booleans are left out)", {
              "type": "object", "properties": {
                  **_RANGE_PROPS, "readings": {"type": "integer"},
                  "metrics": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                      "min": _NUMBER, "max": _NUMBER, "avg": _NUMBER, "count": {"type": "integer"}}}}}})},
          query=StatisticsQuery, praan=STATISTICS,
          description="`from`/`to` in the answer are the range covered: a range widened to whole buckets "
                      "(resolution hour/day, or an end older than the raw readings kept) says so there."),
    Route("GET", "/api/device/{deviceId}/series", device_series, "A metric as points of `step` seconds (charts)",
          _DEVICES, {200: Reply("One point per bucket that holds data, oldest first", {
              "type": "object", "properties": {
                  **_RANGE_PROPS, "metric": {"type": "string"}, "step": {"type": "integer"},
                  "points": {"type": "array", "items": {"type": "object", "properties": {
                      "ts": {"type": "integer", "description": "The bucket's start (epoch s)"}, "min": _NUMBER,
                      "max": _NUMBER, "avg": _NUMBER, "count": {"type": "integer"},
                      "last": {**_NUMBER, "description": "The value of the bucket's newest reading"}}}}}})},
          query=SeriesQuery),
)
