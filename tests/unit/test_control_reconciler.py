"""The reconciler on its own: layers -> one command at a time, its back-off, and who it says sent each."""

from __future__ import annotations

from gateway.control.command_model import CommandRequest, Send
from gateway.control.desired import FanState, Layer
from tests.fixtures.control import Parts


def sent(p: Parts) -> list[tuple[str, object, str, str | None]]:
    """Commands queued to be sent: (action, value, source and cause of the record)."""
    out: list[tuple[str, object, str, str | None]] = []
    for effect in p.of(Send):
        record = p.commands.record(effect.command_id)
        assert record is not None
        out.append((effect.command.command.action, effect.command.command.value, record.source, record.cause))
    return out


async def test_one_step_at_a_time_each_planned_from_the_reported_state() -> None:
    p = Parts()
    p.layers.set_manual("AP-01", FanState(True, 3), "panel", p.now)
    p.online(powerOn=False, fanSpeed=1)
    assert sent(p) == [("turnOn", None, "reconcile", "manual")]  # not turnOn and setFanSpeed at once
    await p.perform()
    p.ack(p.last_sent().command_id, state={"powerOn": True, "fanSpeed": 1})
    await p.perform()
    assert [a for a, _ in p.sent_actions()] == ["turnOn", "setFanSpeed"]
    p.ack(p.last_sent().command_id, state={"powerOn": True, "fanSpeed": 3})
    await p.perform()
    assert len(p.sent) == 2  # there: nothing more
    assert p.metrics.value("gateway_reconciler_commands_total") == 2


async def test_nothing_for_an_offline_unknown_or_busy_device() -> None:
    p = Parts(devices=("AP-01",))
    p.layers.set_manual("AP-01", FanState(True, 3), "api", p.now)
    p.reconciler.reconcile("AP-01", p.now)  # offline: applied when it comes online
    p.layers.set_manual("AP-09", FanState(True, 3), "api", p.now)
    p.commands.device_online("AP-09", p.now)
    p.reconciler.reconcile("AP-09", p.now)  # not configured
    assert p.of(Send) == []
    p.online(powerOn=True, fanSpeed=1)
    p.commands.submit(CommandRequest.create("AP-01", "turnOff", source="api"), p.now)  # queued behind
    p.layers.desired.set_layer("AP-01", Layer.PRECLEAN, FanState(True, 5))
    p.reconciler.layer_changed("AP-01", p.now)  # busy: remembered, not sent
    assert [m.command.command.action for m in p.of(Send)] == ["setFanSpeed"]
    await p.perform()
    p.ack(p.last_sent().command_id, state={"powerOn": True, "fanSpeed": 3})
    await p.perform()  # the queued turnOff goes next; the pre-clean waits until it is done
    assert [a for a, _ in p.sent_actions()] == ["setFanSpeed", "turnOff"]
    p.ack(p.last_sent().command_id, state={"powerOn": False, "fanSpeed": 3})
    await p.perform()
    assert p.sent_actions()[2:] == [("turnOn", None)]


async def test_back_off_doubles_up_to_the_maximum_and_a_reconnect_ends_it() -> None:
    p = Parts()  # back-off 60 s, at most 200 s
    p.layers.desired.set_layer("AP-01", Layer.PRECLEAN, FanState(True, 5))
    p.online(powerOn=True, fanSpeed=1)
    for expected_delay in (60, 120, 200):
        await p.perform()
        p.ack(p.last_sent().command_id, ok=False)
        await p.perform()
        tries = len(p.sent)
        assert p.reconciler.next_deadline(p.now) == p.now + expected_delay
        p.clock.advance(expected_delay - 1)
        p.reconciler.tick(p.now)
        assert len(p.sent) == tries and p.of(Send) == []  # still backing off
        p.clock.advance(1)
        p.reconciler.tick(p.now)
        assert len(p.of(Send)) == 1  # one more try
    assert {a for a, _ in p.sent_actions()} == {"setFanSpeed"}
    assert len({c.command_id for c in p.sent}) == 3
    await p.perform()
    p.ack(p.last_sent().command_id, ok=False)
    await p.perform()
    assert p.reconciler.next_deadline(p.now) == p.now + 200
    p.online(powerOn=True, fanSpeed=1)  # a reconnect is a fresh chance
    assert len(p.of(Send)) == 1 and p.reconciler.next_deadline(p.now) is None


async def test_an_ok_that_leaves_the_device_elsewhere_backs_off_too() -> None:
    p = Parts()
    p.layers.desired.set_layer("AP-01", Layer.PRECLEAN, FanState(True, 5))
    p.online(powerOn=True, fanSpeed=1)
    await p.perform()
    p.ack(p.last_sent().command_id, state={"powerOn": True, "fanSpeed": 1})  # "ok", and stays at 1
    await p.perform()
    assert len(p.sent) == 1 and p.reconciler.next_deadline(p.now) == p.now + 60


async def test_a_restore_is_the_ending_layers_doing_then_manual_again() -> None:
    p = Parts()
    p.layers.set_manual("AP-01", FanState(True, 2), "panel", p.now)
    p.online(powerOn=True, fanSpeed=2)
    p.layers.desired.set_layer("AP-01", Layer.SCHEDULE, FanState(True, 4))
    p.reconciler.layer_changed("AP-01", p.now)
    assert sent(p) == [("setFanSpeed", 4, "reconcile", "schedule")]
    await p.perform()
    p.ack(p.last_sent().command_id, state={"powerOn": True, "fanSpeed": 4})
    await p.perform()
    p.layers.desired.clear_layer("AP-01", Layer.SCHEDULE)
    p.reconciler.layer_changed("AP-01", p.now, "schedule")
    assert sent(p) == [("setFanSpeed", 2, "reconcile", "schedule")]  # the restore: the schedule's doing
    await p.perform()
    p.ack(p.last_sent().command_id, state={"powerOn": True, "fanSpeed": 2})
    await p.perform()
    p.reported["AP-01"]["fanSpeed"] = 0  # later the device rebooted at 0
    p.online(powerOn=True, fanSpeed=0)
    assert sent(p) == [("setFanSpeed", 2, "reconcile", "manual")]  # a re-drive of the manual setting
