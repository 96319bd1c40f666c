"""Desired-state layers: priority, expiry, and 'restore what the lower layers say now'."""

from __future__ import annotations

import pytest

from gateway.control.desired import DesiredState, Effective, FanState, Layer
from gateway.core.clock import ManualClock

DEV = "AP-01"


def fan(speed: int, power: bool = True) -> FanState:
    return FanState(power=power, fan_speed=speed)


def test_empty_device_has_no_desired_state() -> None:
    assert DesiredState().effective(DEV, 0.0) is None
    assert DesiredState().next_expiry(DEV) is None


def test_highest_active_layer_wins_regardless_of_insertion_order() -> None:
    ds = DesiredState()
    ds.set_layer(DEV, Layer.RULE, fan(5))
    ds.set_layer(DEV, Layer.MANUAL, fan(1))
    ds.set_layer(DEV, Layer.PRECLEAN, fan(4))
    ds.set_layer(DEV, Layer.SCHEDULE, fan(2))
    assert ds.effective(DEV, 0.0) == Effective(fan(5), Layer.RULE, None)
    ds.clear_layer(DEV, Layer.RULE)
    assert ds.effective(DEV, 0.0) == Effective(fan(4), Layer.PRECLEAN, None)
    ds.clear_layer(DEV, Layer.PRECLEAN)
    assert ds.effective(DEV, 0.0) == Effective(fan(2), Layer.SCHEDULE, None)
    ds.clear_layer(DEV, Layer.SCHEDULE)
    assert ds.effective(DEV, 0.0) == Effective(fan(1), Layer.MANUAL, None)
    assert ds.clear_layer(DEV, Layer.MANUAL) is True
    assert ds.clear_layer(DEV, Layer.MANUAL) is False
    assert ds.effective(DEV, 0.0) is None
    assert ds.devices() == []


def test_devices_are_independent() -> None:
    ds = DesiredState()
    ds.set_layer("a", Layer.MANUAL, fan(1))
    ds.set_layer("b", Layer.PRECLEAN, fan(5))
    assert ds.effective("a", 0.0) == Effective(fan(1), Layer.MANUAL, None)
    assert ds.effective("b", 0.0) == Effective(fan(5), Layer.PRECLEAN, None)


def test_expiry_is_half_open() -> None:
    ds = DesiredState()
    ds.set_layer(DEV, Layer.MANUAL, fan(1))
    ds.set_layer(DEV, Layer.PRECLEAN, fan(5), expires_at=100.0)
    assert ds.effective(DEV, 99.999) == Effective(fan(5), Layer.PRECLEAN, 100.0)
    assert ds.effective(DEV, 100.0) == Effective(fan(1), Layer.MANUAL, None)


def test_preclean_end_restores_what_lower_layers_say_now_not_a_stale_copy() -> None:
    clock = ManualClock()
    t0 = clock.now()
    ds = DesiredState()
    ds.set_layer(DEV, Layer.MANUAL, fan(1))
    ds.set_layer(DEV, Layer.PRECLEAN, fan(5), expires_at=t0 + 600)
    assert ds.effective(DEV, clock.now()) == Effective(fan(5), Layer.PRECLEAN, t0 + 600)

    clock.advance(300)  # a schedule begins while the pre-clean runs: hidden, but recorded
    ds.set_layer(DEV, Layer.SCHEDULE, fan(3), expires_at=t0 + 3600)
    assert ds.effective(DEV, clock.now()).value == fan(5)  # type: ignore[union-attr]

    clock.advance(300)  # pre-clean expires: the schedule that began meanwhile applies
    assert ds.effective(DEV, clock.now()) == Effective(fan(3), Layer.SCHEDULE, t0 + 3600)

    clock.advance(3000)  # schedule ends too: back to manual
    assert ds.effective(DEV, clock.now()) == Effective(fan(1), Layer.MANUAL, None)


def test_preclean_end_restores_manual_changed_meanwhile() -> None:
    ds = DesiredState()
    ds.set_layer(DEV, Layer.MANUAL, fan(1))
    ds.set_layer(DEV, Layer.PRECLEAN, fan(5), expires_at=600.0)
    ds.set_layer(DEV, Layer.MANUAL, fan(0, power=False), expires_at=None)  # user turned it off meanwhile
    assert ds.effective(DEV, 599.0).value == fan(5)  # type: ignore[union-attr]
    assert ds.effective(DEV, 600.0) == Effective(fan(0, power=False), Layer.MANUAL, None)


def test_cancelled_preclean_restores_schedule_that_ended_meanwhile_is_not_resurrected() -> None:
    ds = DesiredState()
    ds.set_layer(DEV, Layer.MANUAL, fan(2))
    ds.set_layer(DEV, Layer.SCHEDULE, fan(4), expires_at=200.0)
    ds.set_layer(DEV, Layer.PRECLEAN, fan(5), expires_at=1000.0)
    ds.clear_layer(DEV, Layer.PRECLEAN)  # cancelled at t=300, the schedule ended at t=200
    assert ds.effective(DEV, 300.0) == Effective(fan(2), Layer.MANUAL, None)


def test_next_expiry_and_wakeup() -> None:
    ds = DesiredState()
    ds.set_layer(DEV, Layer.MANUAL, fan(1))
    assert ds.next_expiry(DEV) is None
    ds.set_layer(DEV, Layer.SCHEDULE, fan(3), expires_at=500.0)
    ds.set_layer(DEV, Layer.PRECLEAN, fan(5), expires_at=200.0)
    ds.set_layer("other", Layer.RULE, fan(5), expires_at=150.0)
    assert ds.next_expiry(DEV) == 200.0
    assert ds.next_expiry(DEV, now=200.0) == 500.0  # past expiries do not cause a busy loop
    assert ds.next_wakeup(now=0.0) == 150.0
    assert ds.next_wakeup(now=500.0) is None


def test_purge_expired_reports_what_ended() -> None:
    ds = DesiredState()
    ds.set_layer(DEV, Layer.MANUAL, fan(1))
    ds.set_layer(DEV, Layer.PRECLEAN, fan(5), expires_at=100.0)
    ds.set_layer("b", Layer.RULE, fan(5), expires_at=50.0)
    assert ds.purge_expired(10.0) == []
    ended = ds.purge_expired(100.0)
    assert [(e.device, e.layer) for e in ended] == [(DEV, Layer.PRECLEAN), ("b", Layer.RULE)]
    assert ds.get_layer(DEV, Layer.PRECLEAN) is None
    assert ds.devices() == [DEV]
    assert ds.layers(DEV, 100.0).keys() == {Layer.MANUAL}


def test_replacing_a_layer_replaces_its_expiry() -> None:
    ds = DesiredState()
    ds.set_layer(DEV, Layer.PRECLEAN, fan(5), expires_at=100.0)
    ds.set_layer(DEV, Layer.PRECLEAN, fan(4), expires_at=None)
    assert ds.effective(DEV, 10_000.0) == Effective(fan(4), Layer.PRECLEAN, None)


@pytest.mark.parametrize(
    ("power", "speed", "message"),
    [(True, 6, "out of range"), (True, -1, "out of range"), (True, True, "whole number"),
     (1, 2, "power"), (True, 2.5, "whole number")],
)
def test_fan_state_validation(power: object, speed: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FanState(power=power, fan_speed=speed)  # type: ignore[arg-type]


def test_set_layer_rejects_bad_input() -> None:
    ds = DesiredState()
    with pytest.raises(TypeError):
        ds.set_layer(DEV, 2, fan(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expires_at"):
        ds.set_layer(DEV, Layer.RULE, fan(1), expires_at=float("nan"))
