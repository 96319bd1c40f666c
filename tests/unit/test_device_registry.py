"""The device registry: one owner of device state, with change events."""

from __future__ import annotations

import pytest

from gateway.core.models import DeviceState, Reading
from gateway.core.registry import Change, DeviceChange, DeviceRegistry


def reading(ts: float, **metrics: float) -> Reading:
    return Reading("AP-01", ts, dict(metrics), ts)


def test_a_late_reading_does_not_replace_the_latest() -> None:
    reg = DeviceRegistry({"AP-01": "purifier"})
    assert reg.reading(reading(100.0, pm25=5.0))
    assert not reg.reading(reading(50.0, pm25=9.0))
    assert reg.reported("AP-01") == {"pm25": 5.0}
    assert reg.state("AP-01").last_ts == 100.0


def test_presence_events_only_on_transitions() -> None:
    reg = DeviceRegistry({"AP-01": "purifier"})
    seen: list[tuple[str | None, bool]] = []
    reg.subscribe(lambda c: seen.append((c.device_id, c.state.online if c.state else False)), Change.PRESENCE)
    assert reg.set_online("AP-01", True, 1.0)
    assert not reg.set_online("AP-01", True, 2.0)
    assert reg.set_online("AP-01", False, 3.0)
    assert seen == [("AP-01", True), ("AP-01", False)]
    assert reg.state("AP-01").status_changed_at == 3.0


def test_the_first_offline_is_a_transition_for_an_unknown_state() -> None:
    reg = DeviceRegistry({"AP-01": "purifier"})
    assert reg.set_online("AP-01", False, 1.0)  # nothing known before: the first fact is recorded


def test_an_ack_state_is_laid_over_the_latest_reading_until_the_next() -> None:
    reg = DeviceRegistry({"AP-01": "purifier"})
    reg.reading(reading(10.0, pm25=5.0, fanSpeed=1))
    merged = reg.report("AP-01", {"fanSpeed": 4, "powerOn": True, "firmware": "x"})
    assert merged == {"pm25": 5.0, "fanSpeed": 4, "powerOn": True}  # only the reported keys
    reg.reading(reading(11.0, pm25=6.0, fanSpeed=2))
    assert reg.reported("AP-01") == {"pm25": 6.0, "fanSpeed": 2}


def test_listeners_get_what_they_subscribed_to_and_a_failing_one_does_not_stop_the_rest() -> None:
    reg = DeviceRegistry({"AP-01": "purifier"})
    got: list[Change] = []

    def broken(change: DeviceChange) -> None:
        raise RuntimeError("listener bug")

    reg.subscribe(broken)
    unsubscribe = reg.subscribe(lambda c: got.append(c.change), Change.READY, Change.DESIRED)
    reg.reading(reading(1.0, pm25=1.0))
    reg.command_ready("AP-01")
    reg.set_desired("AP-01", {"power": True, "fanSpeed": 3})
    reg.set_desired("AP-01", {"power": True, "fanSpeed": 3})  # same: no event
    reg.set_desired("AP-01", None)
    assert got == [Change.READY, Change.DESIRED, Change.DESIRED]
    unsubscribe()
    reg.command_ready("AP-01")
    assert got == [Change.READY, Change.DESIRED, Change.DESIRED]


def test_restart_marks_everyone_offline_and_summary_lists_configured_devices() -> None:
    reg = DeviceRegistry({"AP-01": "purifier", "S-1": "sensor"})
    reg.restore([DeviceState("AP-01", online=True, last_seen=5.0), DeviceState("GONE", online=True)])
    assert sorted(reg.mark_all_offline(9.0)) == ["AP-01", "GONE"]
    assert reg.summary() == [
        {"id": "AP-01", "kind": "purifier", "online": False, "lastSeen": 5.0},
        {"id": "S-1", "kind": "sensor", "online": False, "lastSeen": None},
    ]
    reg.set_online("S-1", True, 10.0)
    assert reg.online_count() == 1


def test_a_reload_swaps_the_device_table_and_says_so() -> None:
    reg = DeviceRegistry({"AP-01": "purifier"})
    changes: list[DeviceChange] = []
    reg.subscribe(changes.append, Change.DEVICES)
    reg.set_devices({"AP-02": "purifier"})
    assert reg.kind("AP-01") is None and reg.kind("AP-02") == "purifier"
    assert [c.change for c in changes] == [Change.DEVICES]


@pytest.mark.parametrize("value", ["4", 4.5, None])
def test_a_report_ignores_values_that_are_not_state(value: object) -> None:
    reg = DeviceRegistry({"AP-01": "purifier"})
    assert reg.report("AP-01", {"fanSpeed": value}) == {}
