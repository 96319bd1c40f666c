"""History over the REST API and JSON-RPC on a running gateway: statistics and series read rollups and raw
readings by range and still equal the raw computation; the rollups are caught up by the gateway's own job."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.cloud_methods import register_history_methods
from gateway.core.clock import ManualClock
from gateway.settings_retention import RetentionSection
from gateway.store import history
from gateway.store.raw_readings import device_entries
from gateway.uplink.rpc import Dispatcher, Request
from tests.fixtures.gateway import GatewayFactory, RunningGateway
from tests.fixtures.lifecycle import T0, assert_same_points, insert_readings, raw_series, reading_rows

DAY = 86400.0
# The gateway's own lifecycle job, in big steps without pauses: paced as in production (steps of ~2 ms, 50 ms
# apart) its catch-up of the generated days took ~10 s of each test's setup.
UNPACED = "[retention]\npause_ms = 0\nstep_target_ms = 1000\nrollup_batch_readings = 20000"


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> AsyncIterator[RunningGateway]:
    clock = ManualClock(T0 + 3 * DAY)
    running = await gateway_factory(clock=clock, devices=("AP-000", "AP-001"), extra=UNPACED)
    insert_readings(running.db_path, reading_rows(2, T0, T0 + 3 * DAY, 120))
    await running.gateway.lifecycle.catch_up()
    yield running


async def get(gw: RunningGateway, path: str, status: int = 200, **params: Any) -> Any:
    assert gw.gateway.api is not None
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{gw.gateway.api.port}{path}",
                           params={k.rstrip("_"): str(v) for k, v in params.items()}) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return body


def raw_statistics(gw: RunningGateway, device: str, lo: float, hi: float) -> dict[str, Any]:
    # rows and compacted device-hours (the gateway's own lifecycle pass at start may have compacted them)
    db = sqlite3.connect(gw.db_path)
    try:
        rows = device_entries(db, device, lo, hi)
    finally:
        db.close()
    values: dict[str, list[float]] = {}
    for _, _, metrics, _ in rows:
        for name, value in metrics.items():
            if not isinstance(value, bool):
                values.setdefault(name, []).append(value)
    return {"readings": len(rows), "metrics": {n: (min(v), max(v), len(v), sum(v) / len(v)) for n, v in values.items()}}


async def test_statistics_and_series_over_days_equal_the_raw_computation(gw: RunningGateway) -> None:
    lo, hi = T0 + 1000.5, T0 + 2 * DAY + 7777.0  # whole days and hours inside, raw at both ends
    stats = await get(gw, "/api/device/AP-001/statistics", from_=lo, to=hi)
    want = raw_statistics(gw, "AP-001", lo, hi)
    assert (stats["from"], stats["to"], stats["resolution"], stats["readings"]) == (lo, hi, "auto", want["readings"])
    for name, (low, high, count, avg) in want["metrics"].items():
        got = stats["metrics"][name]
        assert (got["min"], got["max"], got["count"]) == (low, high, count) and got["avg"] == pytest.approx(avg)

    series = await get(gw, "/api/device/AP-001/series", metric="pm25", from_=lo, to=hi, step=3600)
    assert_same_points(series["points"], raw_series(gw.db_path, "AP-001", "pm25", lo, hi, 3600))
    assert len(series["points"]) == 24 * 2 + 3 and series["step"] == 3600

    coarse = await get(gw, "/api/device/AP-001/statistics", from_=lo, to=hi, resolution="day")
    assert (coarse["from"], coarse["to"], coarse["readings"]) == (T0, T0 + 3 * DAY, 2 * 720 * 3 // 2)
    raw = await get(gw, "/api/device/AP-001/statistics", from_=lo, to=hi, resolution="raw")
    assert raw["metrics"].keys() == stats["metrics"].keys() and raw["readings"] == stats["readings"]
    for name, got in raw["metrics"].items():
        assert got == {**stats["metrics"][name], "avg": pytest.approx(stats["metrics"][name]["avg"])}

    await get(gw, "/api/device/AP-001/series", 400, metric="pm25", step=1800, resolution="hour")
    await get(gw, "/api/device/AP-001/series", 400, metric="pm25", from_=T0, to=T0 + DAY, step=1)
    await get(gw, "/api/device/NOPE/series", 404, metric="pm25")
    await get(gw, "/api/device/AP-001/series", 400)  # metric is required


async def test_history_in_buckets_of_every_metric_newest_first(gw: RunningGateway) -> None:
    lo, hi = T0 + DAY + 10.0, T0 + 2 * DAY - 10.0
    hours = await get(gw, "/api/device/AP-000/data", from_=lo, to=hi, resolution="hour", limit=30)
    assert (hours["from"], hours["to"], hours["resolution"], hours["count"]) == (T0 + DAY, T0 + 2 * DAY, "hour", 24)
    assert [b["ts"] for b in hours["data"]] == [T0 + DAY + h * 3600 for h in range(23, -1, -1)]
    want = {p["ts"]: p for p in raw_series(gw.db_path, "AP-000", "voc", T0 + DAY, T0 + 2 * DAY - 1e-6, 3600)}
    for bucket in hours["data"]:
        voc, expected = bucket["metrics"]["voc"], want[bucket["ts"]]
        assert bucket["readings"] == 30 and "powerOn" not in bucket["metrics"]
        assert (voc["min"], voc["max"], voc["count"], voc["last"]) == (
            expected["min"], expected["max"], expected["count"], expected["last"])
    auto = await get(gw, "/api/device/AP-000/data", resolution="auto", limit=2)  # the last week: in hours
    assert auto["resolution"] == "hour" and auto["count"] == 2 and auto["data"][0]["ts"] == T0 + 3 * DAY - 3600
    raw = await get(gw, "/api/device/AP-000/data", limit=2)
    assert "resolution" not in raw and raw["data"][0]["metrics"]["voc"] == auto["data"][0]["metrics"]["voc"]["last"]


async def test_the_cloud_asks_the_same_over_json_rpc(gw: RunningGateway) -> None:
    dispatcher = Dispatcher()
    reader = history.LazyReader(gw.db_path)
    register_history_methods(dispatcher, reader, known=gw.gateway.controller.known, now=gw.gateway.clock.now,
                             retention=RetentionSection())

    async def call(method: str, **params: Any) -> dict[str, Any]:
        return await dispatcher.call(Request("1", 1, method, params))

    try:
        lo, hi = T0 + 500.0, T0 + DAY + 500.0
        stats = (await call("device.statistics", device="AP-000", **{"from": lo, "to": hi}))["result"]
        assert stats["readings"] == raw_statistics(gw, "AP-000", lo, hi)["readings"]
        series = (await call("device.series", device="AP-000", metric="voc", step=86400))["result"]
        assert_same_points(series["points"], raw_series(gw.db_path, "AP-000", "voc", series["from"], series["to"],
                                                        86400))
        readings = (await call("device.readings", device="AP-000", limit=3))["result"]
        assert readings["count"] == 3 and readings["data"][0]["ts"] > readings["data"][1]["ts"]
        days = (await call("device.readings", device="AP-000", resolution="day"))["result"]
        assert [(d["ts"], d["readings"]) for d in days["data"]] == [(T0 + k * DAY, 720) for k in (2, 1, 0)]
        bad = await call("device.series", device="AP-000", metric="voc", step=1800, resolution="hour")
        assert bad["error"]["code"] == -32602 and bad["error"]["data"][0]["field"] == "step"
        unknown = await call("device.statistics", device="NOPE")
        assert unknown["error"]["code"] == -32602
    finally:
        await reader.close()
