"""The REST API's control answers over a real gateway: HTTP statuses of failed commands, a command's lookup
and cancel, the Praan backend's request bodies, the list of every schedule, and /metrics."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
from prometheus_client.parser import text_string_to_metric_families

from gateway.cloud_methods import register_control_methods
from gateway.core.clock import ManualClock
from gateway.uplink.rpc import Dispatcher, parse_request
from tests.fixtures.cloud import uplink_config
from tests.fixtures.gateway import GatewayFactory, device_password, free_port, wait_for
from tests.fixtures.purifiers import purifier
from tests.integration.test_api import MONDAY_0830, api_for
from tests.integration.test_control_edges import ScriptedDevice

ONE_ATTEMPT = "command_timeout_seconds = 1\ncommand_attempts = 1"


def refuse(cmd: dict[str, Any]) -> dict[str, Any]:
    return {"commandId": cmd["commandId"], "status": "error", "error": "fan jammed"}


# ------------------------------------------------------------------------------------------- commands


async def test_a_command_that_times_out_answers_504_and_one_refused_502(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(clock=clock, control=ONE_ATTEMPT)
    ctl = gw.gateway.controller
    async with api_for(gw) as api, ScriptedDevice(gw, lambda cmd: None):  # never acks
        request = asyncio.create_task(api.call("POST", "/api/device/AP-01/command", {"action": "turnOff"}))
        await wait_for(lambda: ctl.executor.in_flight("AP-01") is not None)
        clock.advance(1)
        ctl.wake()
        status, body = await request
        assert (status, body["status"], body["attempts"]) == (504, "timeout", 1)  # before: 200
    async with api_for(gw) as api, ScriptedDevice(gw, refuse):
        status, body = await api.call("POST", "/api/device/AP-01/command", {"action": "setFanSpeed", "value": 3})
        assert (status, body["status"], body["error"]) == (502, "failed", "fan jammed")  # before: 200


async def test_a_command_is_looked_up_and_cancelled_by_its_id(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(clock=clock, control="command_timeout_seconds = 10\ncommand_attempts = 2")
    ctl = gw.gateway.controller

    def acks_speed_2(cmd: dict[str, Any]) -> dict[str, Any] | None:  # and never answers anything else
        return {"commandId": cmd["commandId"], "status": "ok"} if cmd.get("value") == 2 else None

    async with api_for(gw) as api, ScriptedDevice(gw, acks_speed_2) as dev:
        await api.ok("POST", "/api/device/AP-01/command", {"action": "setFanSpeed", "value": 2})
        sent = await api.ok("POST", "/api/device/AP-01/command", {"action": "setFanSpeed", "value": 4, "wait": False},
                            202)
        cid = sent["commandId"]
        await wait_for(lambda: len(dev.received) == 2)
        clock.advance(10)  # no ack: the second attempt, same id
        ctl.wake()
        await wait_for(lambda: len(dev.received) == 3)
        live = await api.ok("GET", f"/api/command/{cid}")
        assert (live["status"], live["attempts"], live["source"], live["cause"]) == ("sent", 2, "api", None)
        assert [(a["attempt"], a["result"]) for a in live["attemptLog"]] == [(1, "no-ack"), (2, None)]
        assert live["attemptLog"][1]["sentAt"] - live["attemptLog"][0]["sentAt"] == 10
        assert (await api.ok("GET", "/api/device/AP-01/state"))["layers"]["manual"]["fanSpeed"] == 4

        cancelled = await api.ok("POST", f"/api/command/{cid}/cancel")
        assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled by api"
        assert [a["result"] for a in cancelled["attemptLog"]] == ["no-ack", "cancelled"]
        # the person's setting is what it was before the cancelled command; nothing is sent for that
        assert (await api.ok("GET", "/api/device/AP-01/state"))["layers"]["manual"]["fanSpeed"] == 2
        status, error = await api.call("POST", f"/api/command/{cid}/cancel")
        assert status == 409 and "cancelled" in error["error"]["message"]
        for method, path in (("GET", "/api/command/nope"), ("POST", "/api/command/nope/cancel")):
            status, error = await api.call(method, path)
            assert (status, error["error"]["status"]) == (404, 404), path
        await gw.gateway.controller.drained()
        await gw.flush()
        assert (await api.ok("GET", f"/api/command/{cid}")) == cancelled
    # the stored audit row has the same attempts
    (log,) = gw.query("SELECT attempt_log FROM command_log WHERE command_id = ?", (cid,))[0]
    assert [(a["attempt"], a["result"]) for a in json.loads(log)] == [(1, "no-ack"), (2, "cancelled")]
    assert len(dev.received) == 3


async def test_command_get_and_cancel_over_json_rpc(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    dispatcher = Dispatcher()
    register_control_methods(dispatcher, gw.gateway.controller, wait_seconds=1)

    async def rpc(method: str, params: dict[str, Any]) -> dict[str, Any]:
        return await dispatcher.call(parse_request(json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()))

    queued = gw.gateway.controller.submit_command("AP-02", "turnOn", None, "cloud")  # offline: stays pending
    got = await rpc("command.get", {"commandId": queued.command_id})
    assert got["result"]["status"] == "pending" and got["result"]["source"] == "cloud"
    cancelled = (await rpc("command.cancel", {"commandId": queued.command_id}))["result"]
    assert (cancelled["status"], cancelled["cancelled"]) == ("cancelled", True)
    assert cancelled["error"] == "cancelled by cloud"
    again = (await rpc("command.cancel", {"commandId": queued.command_id}))["result"]
    assert (again["status"], again["cancelled"]) == ("cancelled", False)
    unknown = await rpc("command.get", {"commandId": "nope"})
    assert unknown["error"]["code"] == -32602 and unknown["error"]["data"][0]["field"] == "commandId"


# ------------------------------------------------------------------------------ the Praan backend's bodies


async def test_the_praan_backends_bodies_are_accepted_beside_ours(gateway_factory: GatewayFactory) -> None:
    """A body in Praan's names is answered in Praan's names (one name per field); ours in ours."""
    clock = ManualClock(MONDAY_0830)
    gw = await gateway_factory(clock=clock)
    async with api_for(gw) as api:
        started = await api.ok("POST", "/api/preclean", {"deviceId": "AP-01", "fanMode": 5, "duration": 10}, 201)
        assert (started["fanMode"], started["remainingSeconds"]) == (5, 600)
        assert started["willEndAt"] == "2026-11-23T08:40:00.000Z"
        assert not {"device", "fanSpeed", "endsAt"} & set(started)  # each field under Praan's name only
        assert isinstance(started["remainingSeconds"], int)  # 600, not 600.0
        praan = {"deviceId": "AP-02", "day": "monday", "startTime": "07:30", "endTime": "09:00", "fanSpeed": 3,
                 "isActive": True}
        created = await api.ok("POST", "/api/schedule", praan, 201)
        assert {k: created[k] for k in ("deviceId", "day", "startTime", "endTime", "fanSpeed", "isActive")} == praan
        assert not {"days", "start", "end", "enabled"} & set(created)
        # in effect at 08:30: the run is its execution history
        assert created["lastExecuted"] == "2026-11-23T08:30:00.000Z"
        assert created["executionHistory"] == [
            {"executedAt": "2026-11-23T08:30:00.000Z", "phase": "start", "fanSpeed": 3}]
        changed = await api.ok("PUT", f"/api/schedule/{created['id']}", {"endTime": "10:00", "isActive": False})
        assert (changed["endTime"], changed["isActive"]) == ("10:00", False)
        ours = await api.ok("POST", "/api/schedule", {"deviceId": "AP-01", "days": ["Sat", "Sun"], "start": "22:00",
                                                      "end": "06:00", "fanSpeed": 1}, 201)
        assert (ours["days"], ours["start"], ours["enabled"]) == (["Sat", "Sun"], "22:00", True)

        everything = await api.ok("GET", "/api/schedule")
        assert [s["id"] for s in everything] == [created["id"], ours["id"]]
        assert {k: everything[0][k] for k in ("id", "deviceId", "days", "start", "end", "fanSpeed", "enabled")} == {
            "id": created["id"], "deviceId": "AP-02", "days": ["Mon"], "start": "07:30", "end": "10:00", "fanSpeed": 3,
            "enabled": False}  # our path: our names
        assert await api.ok("GET", "/api/schedule", params={"deviceId": "AP-01"}) == [ours]
        assert await api.ok("GET", "/api/schedule", params={"device": "AP-02"}) == [everything[0]]
        assert await api.ok("GET", "/api/schedule/AP-01") == [ours]  # the Praan path, not asked for Praan's names
        assert all("device" not in s for s in everything)  # one name for the device

        for body, field in [
            ({**praan, "day": "funday"}, "day"),
            ({**praan, "days": ["Mon"]}, "day"),  # both forms of the days
            ({**praan, "start": "07:30"}, "startTime"),  # both names of one field
            ({**praan, "fanSpeed": 9}, "fanSpeed"),
        ]:
            status, error = await api.call("POST", "/api/schedule", body)
            assert (status, error["error"].get("field")) == (400, field), body
        status, error = await api.call("POST", "/api/preclean", {"deviceId": "AP-01", "fanMode": 9, "duration": 10})
        assert (status, error["error"]["field"]) == (400, "fanMode")
        status, error = await api.call("GET", "/api/schedule", params={"deviceId": "NOPE"})
        assert status == 404


# ------------------------------------------------------------------------------------------- /metrics


async def test_metrics_are_served_in_prometheus_text_format(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    async with api_for(gw) as api, purifier(gw, "AP-01", fan_speed=1):
        await api.ok("POST", "/api/device/AP-01/command", {"action": "setFanSpeed", "value": 3})
        async with aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-02", username="AP-02",
                                  password=device_password("AP-02")) as bad:
            await bad.publish("device/AP-02/data", b"not json", qos=1)
        await wait_for(lambda: gw.counter("gateway_readings_committed_total") >= 1
                       and gw.gateway.metrics.total("gateway_quarantined_total") == 1)
        await wait_for(lambda: gw.counter("gateway_event_loop_lag_seconds") > 0
                       or "gateway_event_loop_lag_seconds" in dict(gw.gateway.metrics.families()))

        async with api.session.get(api.base + "/metrics") as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            text = await resp.text()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("gateway_readings_committed_total", ())] >= 1
        assert samples[("gateway_ingest_messages_total", (("channel", "data"),))] >= 2
        assert samples[("gateway_quarantined_total", (("reason", "not-json"),))] == 1
        assert samples[("gateway_commands_finished_total", (("status", "acked"),))] == 1
        assert samples[("gateway_broker_clients_connected", ())] >= 1
        assert samples[("gateway_event_loop_lag_seconds", ())] >= 0
        assert samples[("process_open_fds", ())] > 0

        health = await api.ok("GET", "/health")  # counters are whole numbers
        assert isinstance(health["readingsCommitted"], int) and health["readingsCommitted"] >= 1


async def test_metrics_show_the_cloud_link_and_its_outbox(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(extra=uplink_config(free_port()))  # nobody listens there: the link stays down
    await wait_for(lambda: gw.counter("gateway_uplink_reconnects_total") >= 1)
    async with api_for(gw) as api, api.session.get(api.base + "/metrics") as resp:
        text = await resp.text()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["gateway_uplink_connected"] == 0 and samples["gateway_uplink_reconnects_total"] >= 1
    assert {"gateway_uplink_backlog_rows", "gateway_outbox_oldest_unsent_age_seconds"} <= set(samples)
