"""Every Praan path over a real gateway, as a Praan client calls it: its request names in, its answer names out,
one name per field (checked on the raw JSON), and the same paths still answering ours when not asked."""

from __future__ import annotations

import json
from typing import Any

from gateway.core.clock import ManualClock
from gateway.web.server import ALL_ROUTES
from tests.fixtures.gateway import GatewayFactory
from tests.fixtures.purifiers import purifier
from tests.integration.test_api import MONDAY_0830, Api, api_for, settle

# (ours, Praan's): no object in an answer may carry both names of one field.
TWO_NAMES = [("days", "day"), ("start", "startTime"), ("end", "endTime"), ("enabled", "isActive"),
             ("device", "deviceId"), ("fanSpeed", "fanMode"), ("minutes", "duration"), ("endsAt", "willEndAt")]
PRAAN_PRECLEAN = {"deviceId", "active", "fanMode", "startedAt", "willEndAt", "remainingSeconds"}
PRAAN_SCHEDULE = {"id", "deviceId", "day", "startTime", "endTime", "fanSpeed", "isActive", "lastExecuted",
                  "executionHistory"}


def one_name_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), keys
    for ours, praan in TWO_NAMES:
        assert not (ours in keys and praan in keys), (ours, praan, keys)
    return dict(pairs)


class PraanClient:
    """Calls a route by its template (to know that each Praan route was called); answers parsed strictly."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.called: set[tuple[str, str]] = set()

    async def __call__(self, method: str, template: str, body: Any = None, status: int = 200, *,
                       header: str | None = "praan", **path: Any) -> Any:
        self.called.add((method, template))
        headers = {} if header is None else {"X-Field-Names": header}
        if body is not None:
            headers["Content-Type"] = "application/json"
        url = self.api.base + template.format(**path)
        async with self.api.session.request(method, url, data=None if body is None else json.dumps(body),
                                            headers=headers) as resp:
            text = await resp.text()
            assert resp.status == status, (method, url, resp.status, text)
            if text:  # an answer that may differ by the header says so to caches
                assert resp.headers.get("Vary") == "X-Field-Names"
        return json.loads(text, object_pairs_hook=one_name_each) if text else None


async def test_every_praan_path_answers_a_praan_client_in_its_names(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(clock=ManualClock(MONDAY_0830))
    async with api_for(gw) as api, purifier(gw, "AP-01", fan_speed=1):
        praan = PraanClient(api)
        # Bodies in Praan's names need no header: the body says which vocabulary the answer takes.
        started = await praan("POST", "/api/preclean", {"deviceId": "AP-01", "fanMode": 4, "duration": 10}, 201,
                              header=None)
        assert started == {"deviceId": "AP-01", "active": True, "fanMode": 4, "startedAt": MONDAY_0830,
                           "willEndAt": "2026-11-23T08:40:00.000Z", "remainingSeconds": 600, "source": "api"}
        status = await praan("GET", "/api/preclean/status/{deviceId}", deviceId="AP-01")
        assert set(status) == PRAAN_PRECLEAN | {"source"} and status["willEndAt"] == started["willEndAt"]
        cancelled = await praan("POST", "/api/preclean/cancel", {"deviceId": "AP-01"})
        assert set(cancelled) == PRAAN_PRECLEAN and cancelled["willEndAt"] is None

        body = {"deviceId": "AP-01", "day": "monday", "startTime": "08:00", "endTime": "09:00", "fanSpeed": 3,
                "isActive": True}
        created = await praan("POST", "/api/schedule", body, 201, header=None)
        assert set(created) == PRAAN_SCHEDULE and {k: created[k] for k in body} == body
        assert created["lastExecuted"] == "2026-11-23T08:30:00.000Z"  # in effect at once
        sid = created["id"]
        changed = await praan("PUT", "/api/schedule/{id}", {"startTime": "07:45"}, header=None, id=sid)
        assert (changed["startTime"], changed["endTime"]) == ("07:45", "09:00") and set(changed) == PRAAN_SCHEDULE
        assert await praan("GET", "/api/schedule/{id}", id="AP-01") == [changed]
        await settle(gw)
        detail = await praan("GET", "/api/schedule/detail/{scheduleId}", scheduleId=sid)
        assert set(detail) == PRAAN_SCHEDULE | {"runs"}
        assert detail["runs"] and all(r["deviceId"] == "AP-01" and "device" not in r for r in detail["runs"])

        acked = await praan("POST", "/api/device/{deviceId}/command", {"action": "setFanSpeed", "value": 2},
                            deviceId="AP-01")
        assert (acked["deviceId"], acked["status"], acked["value"]) == ("AP-01", "acked", 2)
        await settle(gw)
        state = await praan("GET", "/api/device/{deviceId}/state", deviceId="AP-01")
        assert state["deviceId"] == "AP-01" and state["online"] is True
        page = await praan("GET", "/api/device/{deviceId}/commands", deviceId="AP-01")
        assert page["deviceId"] == "AP-01" and page["count"] >= 1
        assert all(row["deviceId"] == "AP-01" for row in page["data"])
        latest = await praan("GET", "/api/device/{deviceId}/latest", deviceId="AP-01")
        assert latest["deviceId"] == "AP-01" and latest["data"] is not None
        data = await praan("GET", "/api/device/{deviceId}/data", deviceId="AP-01")
        assert data["deviceId"] == "AP-01" and data["count"] >= 1
        stats = await praan("GET", "/api/device/{deviceId}/statistics", deviceId="AP-01")
        assert stats["deviceId"] == "AP-01" and stats["readings"] >= 1
        # nothing of a device's list has another name at Praan's
        devices = await praan("GET", "/api/device/list/all")
        assert devices == await api.ok("GET", "/api/device/list/all")
        await praan("DELETE", "/api/schedule/{id}", status=204, id=sid)

        # The same paths, not asked: ours. Asked for ours with a Praan body: ours. A wrong value: 400.
        assert "endsAt" in await api.ok("GET", "/api/preclean/status/AP-01")
        ours = await praan("POST", "/api/schedule", body, 201, header="ours")
        assert (ours["days"], ours["start"], ours["enabled"]) == (["Mon"], "08:00", True)
        async with api.session.get(api.base + "/api/device/list/all", headers={"X-Field-Names": "klingon"}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["field"] == "X-Field-Names"

    assert praan.called == {(r.method, r.path) for r in ALL_ROUTES if r.praan is not None}


async def test_the_openapi_document_shows_praans_names(gateway_factory: GatewayFactory) -> None:
    async with api_for(await gateway_factory()) as api:
        doc = await api.ok("GET", "/api/openapi.json")
    schemas = doc["components"]["schemas"]
    assert {"willEndAt", "fanMode", "deviceId"} <= set(schemas["PraanPrecleanStatus"]["properties"])
    assert not {"endsAt", "fanSpeed", "device"} & set(schemas["PraanPrecleanStatus"]["properties"])
    assert "willEndAt" not in schemas["PrecleanStatus"]["properties"]  # ours: endsAt only
    assert {"day", "days", "startTime", "isActive"} <= set(schemas["PraanSchedule"]["properties"])
    status = doc["paths"]["/api/preclean/status/{deviceId}"]["get"]
    assert status["x-praan-names"]["endsAt"] == "willEndAt"
    assert any(p["in"] == "header" and p["name"] == "X-Field-Names" for p in status["parameters"])
    assert status["responses"]["200"]["content"]["application/json"]["schema"] == {"anyOf": [
        {"$ref": "#/components/schemas/PrecleanStatus"}, {"$ref": "#/components/schemas/PraanPrecleanStatus"}]}
    ours = doc["paths"]["/api/command/{commandId}"]["get"]
    assert "x-praan-names" not in ours and all(p["in"] != "header" for p in ours["parameters"])
