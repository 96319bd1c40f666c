"""The manual layer that people's commands set, and what cancelling one of them leaves."""

from __future__ import annotations

from gateway.control.command_model import CommandRequest
from gateway.control.desired import FanState, Layer
from gateway.core.models import RowWrite
from tests.fixtures.control import Parts


def manual(p: Parts) -> FanState | None:
    entry = p.layers.desired.get_layer("AP-01", Layer.MANUAL)
    return entry.value if entry else None


def test_cancelling_commands_in_any_order_replays_the_others_on_the_setting_before_them() -> None:
    p = Parts()
    p.reported["AP-01"] = {"powerOn": True, "fanSpeed": 1}
    speed = CommandRequest.create("AP-01", "setFanSpeed", 3, source="api")
    off = CommandRequest.create("AP-01", "turnOff", source="cloud")
    for request in (speed, off):
        p.layers.command_set_manual("AP-01", request, p.now, live=lambda cid: True)
    assert manual(p) == FanState(False, 3)
    p.layers.command_cancelled("AP-01", speed.command_id, [off], p.now)
    assert manual(p) == FanState(False, 1)  # the turnOff still under way, on the speed from before
    p.layers.command_cancelled("AP-01", off.command_id, [], p.now)
    assert manual(p) is None  # nothing was set before them: no manual layer (and its row is deleted)
    assert p.queued[-1] == RowWrite("desired_layers", {"device_id": "AP-01", "layer": "manual"}, delete=True)


def test_a_finished_command_is_no_longer_undone() -> None:
    p = Parts()
    p.reported["AP-01"] = {"powerOn": True, "fanSpeed": 1}
    first = CommandRequest.create("AP-01", "setFanSpeed", 2, source="api")
    second = CommandRequest.create("AP-01", "setFanSpeed", 4, source="api")
    p.layers.command_set_manual("AP-01", first, p.now, live=lambda cid: True)
    p.layers.command_set_manual("AP-01", second, p.now, live=lambda cid: cid != first.command_id)  # first: done
    p.layers.command_cancelled("AP-01", second.command_id, [], p.now)
    assert manual(p) == FanState(True, 2)
    p.layers.command_cancelled("AP-01", "not-a-command-that-set-it", [], p.now)
    assert manual(p) == FanState(True, 2)
