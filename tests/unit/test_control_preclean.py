"""Pre-clean on its own: start, replace, cancel, expiry and a restart, on a ManualClock."""

from __future__ import annotations

import pytest

from gateway.control.command_model import CommandError
from gateway.control.desired import FanState, Layer
from gateway.core.errors import ConflictError
from gateway.core.models import DeviceEvent, RowWrite
from gateway.store.control_repo import StoredLayer
from tests.fixtures.control import Parts


def events(p: Parts, kind: str) -> list[dict[str, object]]:
    return [e.data for e in p.of(DeviceEvent) if e.type == kind]


def rows(p: Parts) -> list[tuple[str, bool, dict[str, object]]]:
    return [(r.table, r.delete, r.row) for r in p.of(RowWrite)]


def test_start_seeds_the_manual_layer_stores_both_and_reports_the_time_left() -> None:
    p = Parts()
    p.reported["AP-01"] = {"powerOn": True, "fanSpeed": 2}
    start = p.now
    p.precleans.start("AP-01", 5, 10, "api", p.now)
    assert p.layers.desired.get_layer("AP-01", Layer.MANUAL) is not None
    assert p.layers.manual_source("AP-01") == "preclean"  # the restore will be the pre-clean's doing
    assert [(table, row["layer"]) for table, _, row in rows(p)] == [("desired_layers", "manual"),
                                                                   ("desired_layers", "preclean")]
    assert events(p, "preclean.started") == [
        {"fanSpeed": 5, "minutes": 10, "endsAt": start + 600, "source": "api", "replaced": False}]
    assert p.layer_changes == [("AP-01", None)]
    p.clock.advance(400)
    status = p.precleans.status("AP-01", p.now)
    assert (status.active, status.fan_speed, status.started_at, status.ends_at, status.remaining_seconds,
            status.source) == (True, 5, start, start + 600, 200, "api")


def test_a_new_start_replaces_the_running_one() -> None:
    p = Parts()
    p.precleans.start("AP-01", 5, 10, "api", p.now)
    p.precleans.start("AP-01", 3, 20, "cloud", p.now)
    assert [e["replaced"] for e in events(p, "preclean.started")] == [False, True]
    assert p.precleans.status("AP-01", p.now).fan_speed == 3
    entry = p.layers.desired.get_layer("AP-01", Layer.PRECLEAN)
    assert entry is not None and entry.value == FanState(True, 3) and entry.expires_at == p.now + 1200


@pytest.mark.parametrize(("speed", "minutes", "field"), [(0, 10, "fanSpeed"), (6, 10, "fanSpeed"),
                                                        (True, 10, "fanSpeed"), (3, 0, "minutes"),
                                                        (3, 24 * 60 + 1, "minutes")])
def test_bad_arguments_name_their_field_and_change_nothing(speed: int, minutes: int, field: str) -> None:
    p = Parts()
    with pytest.raises(CommandError) as err:
        p.precleans.start("AP-01", speed, minutes, "api", p.now)
    assert err.value.field == field
    assert p.queued == [] and p.layers.desired.devices() == []


def test_cancel_ends_it_now_and_says_who() -> None:
    p = Parts()
    with pytest.raises(ConflictError):
        p.precleans.cancel("AP-01", "api", p.now)
    start = p.now
    p.precleans.start("AP-01", 5, 10, "api", p.now)
    p.clock.advance(60)
    p.precleans.cancel("AP-01", "cloud", p.now)
    assert not p.precleans.status("AP-01", p.now).active
    assert p.layers.desired.get_layer("AP-01", Layer.PRECLEAN) is None
    assert events(p, "preclean.ended") == [
        {"reason": "cancelled", "fanSpeed": 5, "startedAt": start, "endsAt": start + 600, "cancelledBy": "cloud"}]
    assert rows(p)[-1] == ("desired_layers", True, {"device_id": "AP-01", "layer": "preclean"})
    assert p.layer_changes[-1] == ("AP-01", "preclean")


def test_expiry_is_reported_once_and_the_status_turns_inactive_at_the_end() -> None:
    p = Parts()
    p.precleans.start("AP-01", 4, 1, "api", p.now)
    p.clock.advance(60)
    status = p.precleans.status("AP-01", p.now)
    assert (status.active, status.remaining_seconds, status.fan_speed) == (False, 0, None)
    for ended in p.layers.desired.purge_expired(p.now):  # what the control loop's tick does
        p.precleans.expired(ended.device, p.now)
    p.precleans.expired("AP-01", p.now)  # a second call finds nothing running
    assert [e["reason"] for e in events(p, "preclean.ended")] == ["expired"]


def test_a_restart_resumes_with_the_time_left_or_reports_the_end_it_missed() -> None:
    p = Parts(devices=("AP-01", "AP-02"))
    p.precleans.restore(StoredLayer("AP-01", "preclean", True, 4, p.now + 840, p.now - 360, "api"), p.now)
    p.precleans.restore(StoredLayer("AP-02", "preclean", True, 5, p.now - 1, p.now - 601, "cloud"), p.now)
    status = p.precleans.status("AP-01", p.now)
    assert status.active and status.remaining_seconds == 840 and status.source == "api"
    assert p.layers.desired.get_layer("AP-01", Layer.PRECLEAN) is not None
    assert not p.precleans.status("AP-02", p.now).active
    assert events(p, "preclean.ended") == [
        {"reason": "expired", "fanSpeed": 5, "startedAt": p.now - 601, "endsAt": p.now - 1}]
    assert rows(p) == [("desired_layers", True, {"device_id": "AP-02", "layer": "preclean"})]
