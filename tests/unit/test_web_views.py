"""The JSON views of control's domain objects, byte for byte (key order and number forms included)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import time

from gateway.control.command_model import CommandRecord, CommandStatus
from gateway.control.desired import Effective, FanState, Layer, LayerEntry
from gateway.control.preclean import PrecleanStatus
from gateway.control.schedule_service import RunRecord
from gateway.control.schedules import Schedule
from gateway.control.service import DeviceControl
from gateway.web.praan_names import PRECLEAN, to_praan
from gateway.web.views import command_json, device_control_json, preclean_json, schedule_json

RECORD = CommandRecord("c-1", "AP-01", "setFanSpeed", 4, "api", CommandStatus.ACKED, 1, 10.0, 11.0, 11.0, 12.5,
                       None, {"fanSpeed": 4, "powerOn": True}, None)


def dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def test_command() -> None:
    assert dumps(command_json(RECORD)) == (
        '{"commandId":"c-1","device":"AP-01","action":"setFanSpeed","value":4,"source":"api","cause":null,'
        '"status":"acked","attempts":1,"createdAt":10.0,"sentAt":11.0,"lastSentAt":11.0,"finishedAt":12.5,'
        '"error":null,"state":{"fanSpeed":4,"powerOn":true},"note":null,"attemptLog":[]}')


def test_schedule_names_its_device_once_and_gives_its_runs() -> None:
    s = Schedule(3, "AP-01", frozenset({6, 0}), time(22), time(6, 30), 2)
    assert dumps(schedule_json(s)) == ('{"id":3,"deviceId":"AP-01","days":["Mon","Sun"],"start":"22:00",'
                                       '"end":"06:30","fanSpeed":2,"enabled":true,"lastExecuted":null,'
                                       '"executionHistory":[]}')
    runs = [RunRecord("end", 1763800000.5, 2), RunRecord("start", 1763790000.0, 2)]  # newest first
    assert dumps(schedule_json(s, runs)) == (
        '{"id":3,"deviceId":"AP-01","days":["Mon","Sun"],"start":"22:00","end":"06:30","fanSpeed":2,"enabled":true,'
        '"lastExecuted":"2025-11-22T05:40:00.000Z","executionHistory":['
        '{"executedAt":"2025-11-22T08:26:40.500Z","phase":"end","fanSpeed":2},'
        '{"executedAt":"2025-11-22T05:40:00.000Z","phase":"start","fanSpeed":2}]}')


def test_preclean_rest_form_adds_will_end_at() -> None:
    assert preclean_rest_json(PrecleanStatus("AP-01", True, 5, 100.0, 700.0, 599.5, "api"))["willEndAt"] == (
        "1970-01-01T00:11:40.000Z")
    assert preclean_rest_json(PrecleanStatus("AP-01", False, None, None, None, 0, None))["willEndAt"] is None


def preclean_rest_json(status: PrecleanStatus) -> dict[str, object]:
    """The pre-clean as a Praan path answers it in Praan's names (willEndAt there, endsAt in ours)."""
    out: dict[str, object] = to_praan(PRECLEAN, preclean_json(status))
    return out


def test_preclean_inactive_and_active() -> None:
    assert dumps(preclean_json(PrecleanStatus("AP-01", False, None, None, None, 0, None))) == (
        '{"device":"AP-01","active":false,"fanSpeed":null,"startedAt":null,"endsAt":null,"remainingSeconds":0}')
    assert dumps(preclean_json(PrecleanStatus("AP-01", True, 5, 100.0, 700.0, 599.5, "cloud"))) == (
        '{"device":"AP-01","active":true,"fanSpeed":5,"startedAt":100.0,"endsAt":700.0,"remainingSeconds":599.5,'
        '"source":"cloud"}')


def test_device_control() -> None:
    view = DeviceControl(
        Effective(FanState(True, 5), Layer.PRECLEAN, 700.0),
        {Layer.MANUAL: LayerEntry(FanState(False, 2)), Layer.PRECLEAN: LayerEntry(FanState(True, 5), 700.0)},
        RECORD, [],
    )
    body = device_control_json(view)
    assert dumps({k: v for k, v in body.items() if k != "inFlight"}) == (
        '{"desired":{"power":true,"fanSpeed":5,"layer":"preclean","expiresAt":700.0},'
        '"layers":{"manual":{"power":false,"fanSpeed":2,"expiresAt":null},'
        '"preclean":{"power":true,"fanSpeed":5,"expiresAt":700.0}},"pending":[]}')
    assert body["inFlight"] == command_json(RECORD)
    assert device_control_json(DeviceControl(None, {}, None, [RECORD])) == {
        "desired": None, "layers": {}, "inFlight": None, "pending": [command_json(RECORD)]}


def test_the_views_import_no_aiohttp() -> None:
    """The cloud's methods answer with these views when the API (aiohttp, several MB) is off."""
    code = "import sys, gateway.cloud_methods, gateway.web.views; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
