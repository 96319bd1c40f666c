"""The REST API's control answers over a real gateway: HTTP statuses of failed commands, a command's lookup
and cancel, the Praan backend's request bodies, the list of every schedule, and /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.core.clock import ManualClock
from tests.fixtures.gateway import GatewayFactory, wait_for
from tests.integration.test_api import api_for
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
