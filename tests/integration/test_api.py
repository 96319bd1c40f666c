"""The local REST API against a real gateway: embedded broker, SQLite on disk, the control service, and
simulated purifiers speaking the wire contract; requests over HTTP with aiohttp's client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import aiomqtt
import pytest
import structlog

from gateway.core.clock import ManualClock
from gateway.settings import ApiSection
from gateway.web.api import CONTEXT
from gateway.web.server import ALL_ROUTES
from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, wait_for
from tests.fixtures.purifiers import purifier, until

MONDAY_0830 = datetime(2026, 11, 23, 8, 30, tzinfo=UTC).timestamp()
SCHEDULE = {"deviceId": "AP-01", "days": ["Mon", "Wed"], "start": "08:00", "end": "09:00", "fanSpeed": 3}


@dataclass
class Api:
    gw: RunningGateway
    session: aiohttp.ClientSession

    @property
    def base(self) -> str:
        assert self.gw.gateway.api is not None
        return f"http://127.0.0.1:{self.gw.gateway.api.port}"

    async def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                   params: Any = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else None
        async with self.session.request(method, self.base + path, data=data, headers=headers,
                                        params=params) as resp:
            text = await resp.text()
            if resp.status != 204:
                assert resp.content_type == "application/json", (resp.status, text)
            return resp.status, (json.loads(text) if text else None)

    async def ok(self, method: str, path: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
        got, data = await self.call(method, path, body, **kw)
        assert got == status, (method, path, got, data)
        return data


@contextlib.asynccontextmanager
async def api_for(gw: RunningGateway) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield Api(gw, session)


@pytest.fixture
async def api(gateway_factory: GatewayFactory) -> AsyncIterator[Api]:
    async with api_for(await gateway_factory()) as client:
        yield client




async def settle(gw: RunningGateway) -> None:
    await gw.gateway.controller.drained()
    await gw.flush()


# -------------------------------------------------------------------------------------------- OpenAPI


async def test_openapi_document_matches_the_router_both_ways(api: Api) -> None:
    doc = await api.ok("GET", "/api/openapi.json")
    assert doc["openapi"].startswith("3.1")
    assert api.gw.gateway.api is not None
    routes = [r for r in api.gw.gateway.api.app.router.routes() if r.method != "HEAD" and r.resource is not None]
    # The panel's pages share the server (gateway/web/panel): every route that is not the panel's is the API's.
    panel = {r for r in routes if (r.name or "").startswith("panel_")}
    assert {r.resource.canonical for r in panel if r.resource is not None} >= {"/", "/login", "/panel/events"}
    assert not any(r.resource.canonical.startswith("/api/") for r in panel if r.resource is not None)
    registered = {(r.method, r.resource.canonical) for r in routes if r not in panel and r.resource is not None}
    documented = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}
    assert registered == documented
    # api.py's 15, history_api.py's 3, the hubs', control_routes.py's and /metrics
    assert len(registered) == len(ALL_ROUTES) == 23

    schemas = doc["components"]["schemas"]
    for path, ops in doc["paths"].items():
        placeholders = set(re.findall(r"{(\w+)}", path))
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == placeholders, (method, path)
            assert "500" in op["responses"]
            body = op.get("requestBody")
            if body is not None:
                name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                assert schemas[name]["additionalProperties"] is False, name  # the schema says extra keys fail
    # request schemas are the pydantic models' own
    create = doc["paths"]["/api/schedule"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create == {"$ref": "#/components/schemas/ScheduleCreate"}
    assert schemas["ScheduleCreate"]["properties"]["fanSpeed"] == {
        "maximum": 5, "minimum": 1, "title": "Fanspeed", "type": "integer"}
    assert set(schemas["ScheduleCreate"]["required"]) == {"deviceId", "days", "start", "end", "fanSpeed"}
    query = {p["name"] for p in doc["paths"]["/api/device/{deviceId}/data"]["get"]["parameters"] if p["in"] == "query"}
    assert query == {"from", "to", "limit", "resolution"}
    for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(doc)):
        assert ref in schemas


async def test_openapi_document_is_built_at_its_first_request_and_kept(api: Api) -> None:
    """Not at start (a daemon nobody asks for it keeps ~0.3 MB less); once built, the same document each time."""
    assert api.gw.gateway.api is not None
    build = api.gw.gateway.api.app[CONTEXT].openapi  # a functools.cache
    assert build.cache_info().currsize == 0  # type: ignore[attr-defined]
    first = await api.ok("GET", "/api/openapi.json")
    assert build.cache_info().currsize == 1  # type: ignore[attr-defined]
    assert await api.ok("GET", "/api/openapi.json") == first


def test_api_binds_loopback_by_default() -> None:
    assert ApiSection().host == "127.0.0.1"


# --------------------------------------------------------------------------------------- validation

OK_PRECLEAN = {"deviceId": "AP-01", "fanSpeed": 4, "minutes": 10}

BAD_REQUESTS: list[tuple[str, str, Any, str | None]] = [
    # (method, path, body or {"query": ...} or {"raw": ...}, the field the 400 must name; None: no one field)
    ("POST", "/api/schedule", {**SCHEDULE, "fanSpeed": 6}, "fanSpeed"),
    ("POST", "/api/schedule", {**SCHEDULE, "fanSpeed": 0}, "fanSpeed"),
    ("POST", "/api/schedule", {**SCHEDULE, "fanSpeed": "3"}, "fanSpeed"),
    ("POST", "/api/schedule", {**SCHEDULE, "fanSpeed": True}, "fanSpeed"),
    ("POST", "/api/schedule", {**SCHEDULE, "fanSpeed": 2.5}, "fanSpeed"),
    ("POST", "/api/schedule", {k: v for k, v in SCHEDULE.items() if k != "days"}, "days"),
    ("POST", "/api/schedule", {**SCHEDULE, "days": []}, "days"),
    ("POST", "/api/schedule", {**SCHEDULE, "days": "Mon"}, "days"),
    ("POST", "/api/schedule", {**SCHEDULE, "days": ["Mon", "Funday"]}, "days[1]"),
    ("POST", "/api/schedule", {**SCHEDULE, "days": ["Mon", "Mon"]}, "days[1]"),
    ("POST", "/api/schedule", {**SCHEDULE, "start": "8:00"}, "start"),
    ("POST", "/api/schedule", {**SCHEDULE, "end": "24:00"}, "end"),
    ("POST", "/api/schedule", {**SCHEDULE, "end": "08:00"}, "end"),  # same as start
    ("POST", "/api/schedule", {**SCHEDULE, "enabled": "yes"}, "enabled"),
    ("POST", "/api/schedule", {**SCHEDULE, "colour": "red"}, "colour"),
    ("POST", "/api/schedule", {**SCHEDULE, "deviceId": "bad id"}, "deviceId"),
    ("POST", "/api/schedule", {k: v for k, v in SCHEDULE.items() if k != "deviceId"}, "deviceId"),
    ("POST", "/api/schedule", {**SCHEDULE, "device": "AP-02"}, "device"),  # both spellings: ambiguous
    ("POST", "/api/schedule", {**SCHEDULE, "fanSpeed": 9, "start": "x"}, None),  # two fields: none singled out
    ("PUT", "/api/schedule/1", {"fanSpeed": None}, "fanSpeed"),
    ("PUT", "/api/schedule/1", {"start": "25:00"}, "start"),
    ("PUT", "/api/schedule/1", {"id": 2}, "id"),
    ("PUT", "/api/schedule/1", {}, None),
    ("PUT", "/api/schedule/one", {"fanSpeed": 2}, "scheduleId"),
    ("DELETE", "/api/schedule/0", None, "scheduleId"),
    ("GET", "/api/schedule/detail/x1", None, "scheduleId"),
    ("POST", "/api/preclean", {**OK_PRECLEAN, "fanSpeed": 6}, "fanSpeed"),
    ("POST", "/api/preclean", {**OK_PRECLEAN, "minutes": 0}, "minutes"),
    ("POST", "/api/preclean", {**OK_PRECLEAN, "minutes": 1441}, "minutes"),
    ("POST", "/api/preclean", {"fanSpeed": 4, "minutes": 10}, "deviceId"),
    ("POST", "/api/preclean/cancel", {}, "deviceId"),
    ("POST", "/api/preclean/cancel", {"deviceId": "AP-01", "now": True}, "now"),
    ("POST", "/api/device/AP-01/command", {"action": "explode"}, "action"),
    ("POST", "/api/device/AP-01/command", {"action": "setFanSpeed", "value": 9}, "value"),
    ("POST", "/api/device/AP-01/command", {"action": "setFanSpeed"}, "value"),  # the executor's own rule
    ("POST", "/api/device/AP-01/command", {"action": "turnOn", "value": 1}, "value"),
    ("POST", "/api/device/AP-01/command", {"action": "turnOn", "wait": "no"}, "wait"),
    ("POST", "/api/device/AP-01/command", {"value": 1}, "action"),
    ("POST", "/api/device/AP-01/command", {"raw": b"{not json"}, None),
    ("POST", "/api/device/AP-01/command", {"raw": b"[1, 2]"}, None),
    ("POST", "/api/device/AP-01/command", {"raw": b""}, None),
    ("GET", "/api/device/AP-01/data", {"query": {"limit": "0"}}, "limit"),
    ("GET", "/api/device/AP-01/data", {"query": {"limit": "10001"}}, "limit"),
    ("GET", "/api/device/AP-01/data", {"query": {"limit": "ten"}}, "limit"),
    ("GET", "/api/device/AP-01/data", {"query": {"from": "yesterday"}}, "from"),
    ("GET", "/api/device/AP-01/data", {"query": {"to": "2026-13-01T00:00:00"}}, "to"),
    ("GET", "/api/device/AP-01/data", {"query": {"from": "200", "to": "100"}}, "from"),
    ("GET", "/api/device/AP-01/data", {"query": {"form": "1"}}, "form"),
    ("GET", "/api/device/AP-01/data", {"query": [("limit", "1"), ("limit", "2")]}, "limit"),
    ("GET", "/api/device/AP-01/statistics", {"query": {"from": "soon"}}, "from"),
    ("GET", "/api/device/AP-01/statistics", {"query": {"from": "4102444800"}}, "from"),  # 2100, no `to`: now
    ("GET", "/api/device/AP-01/commands", {"query": {"limit": "-1"}}, "limit"),
]


async def test_every_validation_error_is_a_400_naming_its_field(api: Api) -> None:
    created = await api.ok("POST", "/api/schedule", SCHEDULE, 201)
    assert created["id"] == 1
    failures = []
    for method, path, spec, field in BAD_REQUESTS:
        kw: dict[str, Any] = {}
        body = spec
        if isinstance(spec, dict) and "query" in spec:
            kw["params"], body = spec["query"], None
        elif isinstance(spec, dict) and "raw" in spec:
            kw["raw"], body = spec["raw"], None
        status, data = await api.call(method, path, body, **kw)
        error = (data or {}).get("error", {})
        if status != 400 or error.get("status") != 400 or error.get("field") != field or not error.get("message"):
            failures.append((method, path, spec, status, data))
    assert failures == []
    # nothing above changed anything
    assert await api.ok("GET", "/api/schedule/AP-01") == [{**created}]
    assert not (await api.ok("GET", "/api/preclean/status/AP-01"))["active"]
    assert (await api.ok("GET", "/api/device/AP-01/commands"))["data"] == []


async def test_several_problems_are_all_listed(api: Api) -> None:
    status, data = await api.call("POST", "/api/preclean", {"deviceId": "AP-01", "fanSpeed": 9, "minutes": 0})
    assert status == 400
    assert "field" not in data["error"]
    assert {p["field"] for p in data["error"]["problems"]} == {"fanSpeed", "minutes"}
    assert "fanSpeed" in data["error"]["message"] and "minutes" in data["error"]["message"]


async def test_unknown_devices_schedules_and_routes_are_404(api: Api) -> None:
    for path in ("/api/schedule/NOPE", "/api/preclean/status/NOPE", "/api/device/NOPE/data",
                 "/api/device/NOPE/latest", "/api/device/NOPE/state", "/api/device/NOPE/commands",
                 "/api/device/NOPE/statistics", "/api/schedule/detail/42", "/api/no/such/route"):
        status, data = await api.call("GET", path)
        assert (status, data["error"]["status"]) == (404, 404), path
    for method, path, body in [
        ("POST", "/api/schedule", {**SCHEDULE, "deviceId": "NOPE"}),
        ("POST", "/api/preclean", {**OK_PRECLEAN, "deviceId": "NOPE"}),
        ("POST", "/api/preclean/cancel", {"deviceId": "NOPE"}),
        ("POST", "/api/device/NOPE/command", {"action": "turnOn"}),
        ("PUT", "/api/schedule/42", {"fanSpeed": 2}),
        ("DELETE", "/api/schedule/42", None),
    ]:
        status, data = await api.call(method, path, body)
        assert (status, data["error"]["status"]) == (404, 404), (method, path, data)
        assert "NOPE" in data["error"]["message"] or "42" in data["error"]["message"]
    status, data = await api.call("PATCH", "/api/schedule/1", {"fanSpeed": 2})
    assert status == 405 and data["error"]["status"] == 405


# ------------------------------------------------------------------------------------------ schedules


async def test_schedule_crud_round_trip_with_execution_history(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(clock=ManualClock(MONDAY_0830))  # inside Mon 08:00-09:00 (UTC)
    async with api_for(gw) as api:
        created = await api.ok("POST", "/api/schedule", SCHEDULE, 201)
        sid = created["id"]
        # one name for the device; the window in effect started at once: its run is the latest execution
        started = {"executedAt": "2026-11-23T08:30:00.000Z", "phase": "start", "fanSpeed": 3}
        assert created == {"id": sid, "deviceId": "AP-01", "days": ["Mon", "Wed"], "start": "08:00", "end": "09:00",
                           "fanSpeed": 3, "enabled": True, "lastExecuted": started["executedAt"],
                           "executionHistory": [started]}
        # "device" is accepted for "deviceId"; full and lower-case day names too
        other = await api.ok("POST", "/api/schedule", {"device": "AP-01", "days": ["sunday"], "start": "22:00",
                                                       "end": "06:00", "fanSpeed": 1, "enabled": False}, 201)
        assert other["days"] == ["Sun"] and other["deviceId"] == "AP-01" and other["enabled"] is False
        assert await api.ok("GET", "/api/schedule/AP-01") == [created, other]
        assert await api.ok("GET", "/api/schedule/AP-02") == []

        # The window is in effect now: its start is in the execution history.
        await settle(gw)
        detail = await api.ok("GET", f"/api/schedule/detail/{sid}")
        assert {k: v for k, v in detail.items() if k != "runs"} == created
        assert [(r["phase"], r["scheduleId"], r["fanSpeed"]) for r in detail["runs"]] == [("start", sid, 3)]
        assert detail["runs"][0]["windowStart"] == datetime(2026, 11, 23, 8, 0, tzinfo=UTC).timestamp()
        control = await api.ok("GET", "/api/device/AP-01/state")
        assert control["desired"]["layer"] == "schedule" and control["desired"]["fanSpeed"] == 3

        updated = await api.ok("PUT", f"/api/schedule/{sid}", {"fanSpeed": 5, "days": ["Mon"]})
        assert updated == {**created, "fanSpeed": 5, "days": ["Mon"]}
        assert (await api.ok("GET", f"/api/schedule/detail/{sid}"))["fanSpeed"] == 5
        moved = await api.ok("PUT", f"/api/schedule/{other['id']}", {"deviceId": "AP-02", "enabled": True})
        assert "device" not in moved and moved["deviceId"] == "AP-02" and moved["start"] == "22:00"

        status, _ = await api.call("DELETE", f"/api/schedule/{sid}")
        assert status == 204
        assert (await api.call("GET", f"/api/schedule/detail/{sid}"))[0] == 404
        assert (await api.call("DELETE", f"/api/schedule/{sid}"))[0] == 404
        assert await api.ok("GET", "/api/schedule/AP-01") == []
        assert await api.ok("GET", "/api/schedule/AP-02") == [moved]
    await settle(gw)
    assert [sid for (sid,) in gw.query("SELECT id FROM schedules")] == [other["id"]]


async def test_a_schedule_changed_through_the_api_is_stored(api: Api) -> None:
    created = await api.ok("POST", "/api/schedule", SCHEDULE, 201)
    await api.ok("PUT", f"/api/schedule/{created['id']}", {"fanSpeed": 5, "deviceId": "AP-02"})
    # Not gw.flush(): a refused record never wakes flush's waiters (store/writer.py), so poll instead.
    await wait_for(lambda: api.gw.counter("gateway_store_rows_refused_total") > 0
                   or api.gw.query("SELECT device_id, fan_speed FROM schedules") == [("AP-02", 5)])
    assert api.gw.counter("gateway_store_rows_refused_total") == 0
    assert api.gw.query("SELECT device_id, fan_speed FROM schedules") == [("AP-02", 5)]


# ------------------------------------------------------------------------------------------ pre-clean


async def test_preclean_start_status_cancel_over_a_simulated_purifier(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(clock=clock)
    async with api_for(gw) as api, purifier(gw, "AP-01", fan_speed=2) as sim:
        idle = await api.ok("GET", "/api/preclean/status/AP-01")
        assert idle["active"] is False and idle["device"] == "AP-01"
        assert (await api.call("POST", "/api/preclean/cancel", {"deviceId": "AP-01"}))[0] == 409

        started = await api.ok("POST", "/api/preclean", {"device": "AP-01", "fanSpeed": 5, "minutes": 10}, 201)
        assert started["active"] is True and started["fanSpeed"] == 5
        assert started["remainingSeconds"] == 600 and started["endsAt"] == clock.now() + 600
        await until(sim, lambda: sim.model.fan_speed == 5)

        clock.advance(120)
        status = await api.ok("GET", "/api/preclean/status/AP-01")
        assert status["active"] and status["remainingSeconds"] == 480
        state = await api.ok("GET", "/api/device/AP-01/state")
        assert state["desired"] == {"power": True, "fanSpeed": 5, "layer": "preclean", "expiresAt": started["endsAt"]}

        cancelled = await api.ok("POST", "/api/preclean/cancel", {"deviceId": "AP-01"})
        assert cancelled["active"] is False
        await until(sim, lambda: sim.model.fan_speed == 2)  # what it ran at before
        status, data = await api.call("POST", "/api/preclean/cancel", {"deviceId": "AP-01"})
        assert status == 409 and data["error"]["status"] == 409
    await settle(gw)
    assert [json.loads(d)["reason"] for (d,) in gw.query("SELECT data FROM events WHERE type = 'preclean.ended'")] == [
        "cancelled"]
    assert ("reconcile", "preclean") in set(gw.query("SELECT DISTINCT source, cause FROM command_log"))


# ------------------------------------------------------------------------------------------- commands


async def test_command_to_an_online_purifier_answers_200_acked_with_its_state(api: Api) -> None:
    gw = api.gw
    async with purifier(gw, "AP-01", fan_speed=1) as sim:
        record = await api.ok("POST", "/api/device/AP-01/command", {"action": "setFanSpeed", "value": 4})
        assert record["status"] == "acked" and record["source"] == "api" and record["attempts"] == 1
        assert record["state"] == {"fanSpeed": 4, "powerOn": True}
        assert record["device"] == "AP-01" and record["value"] == 4 and record["note"] is None
        assert sim.model.fan_speed == 4

        off = await api.ok("POST", "/api/device/AP-01/command", {"action": "turnOff"})
        assert off["status"] == "acked" and off["state"]["powerOn"] is False

        # wait=false: answered at once, 202, the command already on its way
        quick = await api.ok("POST", "/api/device/AP-01/command", {"action": "turnOn", "wait": False}, 202)
        assert quick["status"] in ("pending", "sent") and quick["finishedAt"] is None
        await until(sim, lambda: sim.model.power_on)

        state = await api.ok("GET", "/api/device/AP-01/state")
        assert state["online"] is True and state["metrics"]["fanSpeed"] == 4
        assert state["desired"]["layer"] == "manual" and state["desired"]["fanSpeed"] == 4
        assert set(state) >= {"device", "online", "lastSeen", "ts", "metrics", "desired", "layers", "inFlight",
                              "pending"}
    await settle(gw)
    log = (await api.ok("GET", "/api/device/AP-01/commands"))["data"]
    assert [(c["action"], c["status"]) for c in log] == [("turnOn", "acked"), ("turnOff", "acked"),
                                                        ("setFanSpeed", "acked")]
    assert log[2]["commandId"] == record["commandId"] and log[2]["state"] == {"fanSpeed": 4, "powerOn": True}
    assert [c["action"] for c in (await api.ok("GET", "/api/device/AP-01/commands", params={"limit": "1"}))["data"]
            ] == ["turnOn"]


async def test_command_to_an_offline_device_answers_202_queued_then_is_applied(api: Api) -> None:
    gw = api.gw
    record = await api.ok("POST", "/api/device/AP-02/command", {"action": "setFanSpeed", "value": 5}, 202)
    assert record["status"] == "pending" and record["attempts"] == 0
    assert "queued" in record["note"] and "offline" in record["note"]
    await settle(gw)
    log = (await api.ok("GET", "/api/device/AP-02/commands"))["data"]
    assert [(c["commandId"], c["status"], c["note"]) for c in log] == [
        (record["commandId"], "pending", record["note"])]
    assert (await api.ok("GET", "/api/device/AP-02/state"))["pending"][0]["commandId"] == record["commandId"]

    async with purifier(gw, "AP-02", fan_speed=1) as sim:
        await until(sim, lambda: sim.model.fan_speed == 5)
        cid = record["commandId"]
        await wait_for(lambda: gw.query("SELECT status FROM command_log WHERE command_id = ?", (cid,)) == [("acked",)])
    log = (await api.ok("GET", "/api/device/AP-02/commands"))["data"]
    assert [(c["commandId"], c["status"], c["attempts"]) for c in log] == [(cid, "acked", 1)]
    assert log[0]["state"]["fanSpeed"] == 5 and "queued" in log[0]["note"]  # the audit says it waited


async def test_a_full_command_queue_answers_429(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(control="max_pending_per_device = 1")
    async with api_for(gw) as api:
        await api.ok("POST", "/api/device/AP-01/command", {"action": "turnOn"}, 202)
        status, data = await api.call("POST", "/api/device/AP-01/command", {"action": "turnOff"})
        assert status == 429 and data["error"]["status"] == 429


async def test_a_command_without_an_ack_answers_202_after_the_configured_wait(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="port = 0\ncommand_wait_seconds = 0.3")
    async with api_for(gw) as api, aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-01", username="AP-01",
                                                  password=device_password("AP-01")) as mute:
        await mute.publish("device/AP-01/status", b"online", qos=1, retain=True)
        await mute.subscribe("device/AP-01/command", qos=1)
        await wait_for(lambda: gw.gateway.controller.executor.is_online("AP-01"))
        record = await api.ok("POST", "/api/device/AP-01/command", {"action": "turnOn"}, 202)
        assert record["status"] == "sent" and record["attempts"] == 1 and record["note"] is None


# ------------------------------------------------------------------------------------------- readings


async def test_data_latest_and_statistics_over_readings_the_purifiers_published(api: Api) -> None:
    gw = api.gw
    assert (await api.ok("GET", "/api/device/AP-02/latest")) == {"device": "AP-02", "data": None}
    async with purifier(gw, "AP-01", interval=0.05):
        await wait_for(lambda: gw.query("SELECT count(*) FROM readings WHERE device_id = 'AP-01'")[0][0] >= 8)
    await gw.flush()
    rows = gw.query("SELECT ts, received_at, metrics FROM readings WHERE device_id = 'AP-01' ORDER BY ts DESC")
    stored = [{"ts": ts, "receivedAt": rec, "metrics": json.loads(m)} for ts, rec, m in rows]

    latest = await api.ok("GET", "/api/device/AP-01/latest")
    assert latest == {"device": "AP-01", "data": stored[0]}
    assert {"pm25", "temperature", "fanSpeed", "powerOn"} <= set(latest["data"]["metrics"])

    everything = await api.ok("GET", "/api/device/AP-01/data", params={"limit": "10000"})
    assert everything["data"] == stored and everything["count"] == len(stored) and everything["limit"] == 10000
    assert (await api.ok("GET", "/api/device/AP-01/data"))["limit"] == 100
    first3 = await api.ok("GET", "/api/device/AP-01/data", params={"limit": "3"})
    assert first3["data"] == stored[:3]

    lo, hi = stored[-2]["ts"], stored[1]["ts"]  # drop the newest and the oldest
    ranged = await api.ok("GET", "/api/device/AP-01/data", params={"from": str(lo), "to": str(hi)})
    assert ranged["data"] == stored[1:-1] and (ranged["from"], ranged["to"]) == (lo, hi)
    iso = datetime.fromtimestamp(lo, UTC).isoformat()
    assert (await api.ok("GET", "/api/device/AP-01/data", params={"from": iso}))["data"] == stored[:-1]
    assert (await api.ok("GET", "/api/device/AP-02/data"))["data"] == []

    stats = await api.ok("GET", "/api/device/AP-01/statistics", params={"from": str(lo), "to": str(hi)})
    window = stored[1:-1]
    assert stats["device"] == "AP-01" and stats["readings"] == len(window) and (stats["from"], stats["to"]) == (lo, hi)
    assert "powerOn" not in stats["metrics"]  # a boolean
    for name in ("pm25", "temperature", "humidity", "voc", "fanSpeed"):
        values = [r["metrics"][name] for r in window]
        got = stats["metrics"][name]
        assert (got["min"], got["max"], got["count"]) == (min(values), max(values), len(values)), name
        assert got["avg"] == pytest.approx(sum(values) / len(values)), name
    # default range: the last 24 hours up to now, so everything just published
    recent = await api.ok("GET", "/api/device/AP-01/statistics")
    assert recent["readings"] == len(stored) and recent["to"] - recent["from"] == 24 * 3600

    devices = await api.ok("GET", "/api/device/list/all")
    assert [(d["id"], d["kind"]) for d in devices] == [("AP-01", "purifier"), ("AP-02", "purifier")]
    assert set(devices[0]) == {"id", "kind", "online", "lastSeen"} and devices[0]["lastSeen"] is not None
    health = await api.ok("GET", "/health")
    assert health["status"] == "ok" and health["gatewayId"] == "gw-test"


# ---------------------------------------------------------------------------------------- failures


async def test_an_unexpected_error_is_a_logged_500_without_a_traceback(api: Api, monkeypatch: pytest.MonkeyPatch
                                                                      ) -> None:
    def boom(device: str) -> dict[str, Any]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.gw.gateway.controller, "preclean_status", boom)
    with structlog.testing.capture_logs() as logs:
        status, data = await api.call("GET", "/api/preclean/status/AP-01")
    assert status == 500 and data == {"error": {"status": 500, "message": "internal error (logged by the gateway)"}}
    assert "secret" not in json.dumps(data) and "Traceback" not in json.dumps(data)
    entry = next(e for e in logs if e["event"] == "api.unhandled_error")
    assert entry["log_level"] == "error" and entry["exc_info"] is True and entry["path"] == "/api/preclean/status/AP-01"
    # the API keeps serving
    assert (await api.ok("GET", "/health"))["status"] == "ok"


async def test_stop_does_not_wait_for_a_command_still_waiting_for_its_ack(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with api_for(gw) as api, aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-01", username="AP-01",
                                                  password=device_password("AP-01")) as mute:
        await mute.publish("device/AP-01/status", b"online", qos=1, retain=True)
        await mute.subscribe("device/AP-01/command", qos=1)  # a device is sent commands once it listens
        await wait_for(lambda: gw.gateway.controller.executor.is_online("AP-01"))
        request = asyncio.create_task(api.call("POST", "/api/device/AP-01/command", {"action": "turnOn"}))
        await wait_for(lambda: gw.gateway.controller.executor.in_flight("AP-01") is not None)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await gw.stop()
        assert loop.time() - started < 5
        with contextlib.suppress(aiohttp.ClientError):
            await request
