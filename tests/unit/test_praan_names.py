"""The one table of the Praan backend's field names: answers rendered in them (one name per field), the keys
that mark a Praan client's body, the answer vocabulary a request chooses, and the README's table of it."""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path

import pytest

from gateway.control.preclean import PrecleanStatus
from gateway.control.schedule_service import RunRecord
from gateway.control.schedules import Schedule
from gateway.web.bodies import PrecleanStart, ScheduleCreate, ScheduleUpdate
from gateway.web.praan_names import (
    COMMAND_PAGE,
    DEVICE_STATE,
    PRECLEAN,
    RESOURCES,
    SCHEDULE,
    mapping_rows,
    to_praan,
    wants_praan,
)
from gateway.web.views import preclean_json, schedule_json

README = Path(__file__).resolve().parents[2] / "README.md"


def test_a_preclean_in_praan_names() -> None:
    ours = preclean_json(PrecleanStatus("AP-01", True, 5, 100.0, 700.0, 599.5, "api"))
    assert to_praan(PRECLEAN, ours) == {
        "deviceId": "AP-01", "active": True, "fanMode": 5, "startedAt": 100.0, "willEndAt": "1970-01-01T00:11:40.000Z",
        "remainingSeconds": 599.5, "source": "api"}
    idle = to_praan(PRECLEAN, preclean_json(PrecleanStatus("AP-01", False, None, None, None, 0, None)))
    assert idle == {"deviceId": "AP-01", "active": False, "fanMode": None, "startedAt": None, "willEndAt": None,
                    "remainingSeconds": 0}


def test_a_schedule_in_praan_names_keeps_days_only_when_it_has_several() -> None:
    one = Schedule(3, "AP-01", frozenset({0}), time(7, 30), time(9), 3)
    runs = [RunRecord("start", 1763790000.0, 3)]
    assert to_praan(SCHEDULE, schedule_json(one, runs)) == {
        "id": 3, "deviceId": "AP-01", "day": "monday", "startTime": "07:30", "endTime": "09:00", "fanSpeed": 3,
        "isActive": True, "lastExecuted": "2025-11-22T05:40:00.000Z",
        "executionHistory": [{"executedAt": "2025-11-22T05:40:00.000Z", "phase": "start", "fanSpeed": 3}]}
    several = to_praan(SCHEDULE, [schedule_json(Schedule(4, "AP-01", frozenset({5, 6}), time(22), time(6), 1))])
    assert several[0]["days"] == ["Sat", "Sun"] and "day" not in several[0]
    detail = to_praan(SCHEDULE, {**schedule_json(one), "runs": [{"id": 1, "scheduleId": 3, "device": "AP-01"}]})
    assert detail["runs"] == [{"id": 1, "scheduleId": 3, "deviceId": "AP-01"}]


def test_nested_objects_take_their_own_resources_names_and_metrics_keep_theirs() -> None:
    command = {"commandId": "c-1", "device": "AP-01", "action": "setFanSpeed", "value": 4}
    state = {"device": "AP-01", "metrics": {"fanSpeed": 3, "device": 1}, "desired": {"fanSpeed": 3},
             "inFlight": command, "pending": [command]}
    praan = to_praan(DEVICE_STATE, state)
    assert praan["deviceId"] == "AP-01" and "device" not in praan
    assert praan["metrics"] == {"fanSpeed": 3, "device": 1} and praan["desired"] == {"fanSpeed": 3}
    assert praan["inFlight"]["deviceId"] == praan["pending"][0]["deviceId"] == "AP-01"
    page = to_praan(COMMAND_PAGE, {"device": "AP-01", "count": 1, "data": [command]})
    assert page["data"][0] == {**{k: v for k, v in command.items() if k != "device"}, "deviceId": "AP-01"}


def test_two_names_for_one_field_are_never_rendered() -> None:
    with pytest.raises(RuntimeError, match="collide"):
        to_praan(PRECLEAN, {"device": "AP-01", "deviceId": "AP-01"})
    for resource in RESOURCES:
        praan = [n.praan for n in resource.names]
        assert len(praan) == len(set(praan)), resource.title


def test_the_keys_that_mark_a_praan_body() -> None:
    assert PRECLEAN.request_keys(PrecleanStart.model_fields) == {"fanMode", "duration"}
    assert SCHEDULE.request_keys(ScheduleCreate.model_fields) == SCHEDULE.request_keys(ScheduleUpdate.model_fields) \
        == {"day", "startTime", "endTime", "isActive"}
    keys = PRECLEAN.request_keys(PrecleanStart.model_fields)
    assert wants_praan(None, {"deviceId": "AP-01", "fanMode": 5}, keys)
    assert not wants_praan(None, {"deviceId": "AP-01", "fanSpeed": 5}, keys)  # deviceId is our name too
    assert not wants_praan(None, None, keys)
    assert wants_praan("Praan", None, keys) and not wants_praan(" ours ", {"fanMode": 5}, keys)  # the header wins
    with pytest.raises(ValueError, match="expected"):
        wants_praan("theirs", None, keys)


def test_the_readme_table_is_the_table() -> None:
    text = README.read_text()
    section = text[text.index("**Praan backend compatibility.**"):]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \|", section, re.MULTILINE)
    assert rows == [(name.praan, name.ours) for name, _ in mapping_rows()]
