"""The command service on its own: waiting, acks (on their own or as the link's reply), links that fail,
and commands a restart interrupted."""

from __future__ import annotations

import asyncio

from gateway.control.command_model import Audit, CommandRequest, CommandStatus, Finished
from gateway.core.device_commands import Ack, OutgoingCommand
from gateway.core.links import LinkError
from gateway.core.models import DeviceEvent, RowWrite
from gateway.store.control_repo import UnfinishedCommand
from tests.fixtures.control import Parts
from tests.fixtures.gateway import wait_for


def request(action: str = "setFanSpeed", value: int | None = 4) -> CommandRequest:
    return CommandRequest.create("AP-01", action, value, source="api")


async def test_a_waiter_gets_the_finished_record_and_the_ack_state_is_stored() -> None:
    p = Parts()
    p.online(powerOn=True, fanSpeed=1)
    record = p.commands.submit(request(), p.now)
    waiting = asyncio.create_task(p.commands.wait_finished(record.command_id, 5))
    await p.perform()
    p.ack(record, state={"powerOn": True, "fanSpeed": 4})
    assert p.reported["AP-01"]["fanSpeed"] == 4  # at once, before the effects run
    await p.perform()
    done = await waiting
    assert done.status is CommandStatus.ACKED and done.state == {"powerOn": True, "fanSpeed": 4}
    stored = [r for r in p.stored if isinstance(r, RowWrite)]
    assert [(r.table, r.row.get("status")) for r in stored] == [
        ("command_log", "pending"), ("command_log", "sent"), ("device_state", None), ("command_log", "acked")]
    assert [e.type for e in p.stored if isinstance(e, DeviceEvent)] == ["command.result"]
    assert p.commands.record(record.command_id) == done  # remembered after the executor let go


async def test_an_ok_without_state_counts_as_the_commands_own_effect() -> None:
    p = Parts()
    p.online(powerOn=True, fanSpeed=1)
    record = p.commands.submit(request("turnOff", None), p.now)
    p.ack(record)
    assert p.reported["AP-01"]["powerOn"] is False


async def test_wait_finished_gives_the_record_as_it_stands_after_the_timeout() -> None:
    p = Parts()
    record = p.commands.submit(request(), p.now)  # offline: queued
    latest = await p.commands.wait_finished(record.command_id, 0.01)
    assert latest.status is CommandStatus.PENDING and latest.note is not None


async def test_a_link_whose_reply_is_the_ack_finishes_the_command_in_the_same_turn() -> None:
    p = Parts()
    p.link_reply = lambda c: Ack(c.command_id, True, None, {"powerOn": True, "fanSpeed": 4})
    p.online(powerOn=True, fanSpeed=1)
    record = p.commands.submit(request(), p.now)
    await p.perform()
    done = p.commands.record(record.command_id)
    assert done is not None and done.status is CommandStatus.ACKED
    assert p.reported["AP-01"]["fanSpeed"] == 4
    assert p.metrics.value("gateway_commands_published_total") == 1


async def test_a_command_the_link_could_not_send_is_retried_at_its_deadline() -> None:
    p = Parts()

    def down(command: OutgoingCommand) -> Ack | None:
        raise LinkError("bus down")

    p.link_reply = down
    p.online(powerOn=True, fanSpeed=1)
    record = p.commands.submit(request(), p.now)
    await p.perform()
    assert p.metrics.value("gateway_commands_published_total") == 0
    p.link_reply = lambda c: None
    assert p.commands.next_deadline() == p.now + 30
    p.clock.advance(30)
    p.commands.tick(p.now)
    await p.perform()
    assert [c.command_id for c in p.sent] == [record.command_id]  # the same command, its second attempt
    again = p.commands.record(record.command_id)
    assert again is not None and again.attempts == 2
    assert p.metrics.value("gateway_commands_published_total") == 1


def test_interrupted_commands_are_closed_saying_whether_their_intent_lives_on() -> None:
    p = Parts(devices=("AP-01", "AP-02"))
    rows = [UnfinishedCommand("c-1", "AP-01", "setFanSpeed", 5, "cloud", 1, 1.0, 2.0, 2.0, None),
            UnfinishedCommand("c-2", "AP-02", "turnOff", None, "api", 0, 1.0, None, None, "queued")]
    p.commands.close_unfinished(rows, p.now, carried=lambda device: device == "AP-01")
    audits = [a.record for a in p.of(Audit)]
    assert [(r.command_id, r.status, r.finished_at) for r in audits] == [
        ("c-1", CommandStatus.CANCELLED, p.now), ("c-2", CommandStatus.CANCELLED, p.now)]
    assert audits[0].error is not None and "applied when the device is back" in audits[0].error
    assert audits[1].error is not None and "not carried out" in audits[1].error
    assert [f.record.command_id for f in p.of(Finished)] == ["c-1", "c-2"]


async def test_a_slow_link_holds_up_neither_the_control_loop_nor_other_devices() -> None:
    """A Modbus write to a slave that is gone takes (retries + 1) x its timeout. The control loop used to
    wait for it: every other device's commands, audit rows and schedule boundaries waited too."""
    p = Parts(devices=("AP-01", "AP-02"))
    p.online("AP-01", powerOn=True, fanSpeed=1)
    p.online("AP-02", powerOn=True, fanSpeed=1)
    p.link_gates["AP-01"] = slow = asyncio.Event()
    first = p.commands.submit(request(), p.now)
    second = p.commands.submit(CommandRequest.create("AP-02", "setFanSpeed", 2, source="api"), p.now)
    await asyncio.wait_for(p.perform_queue(), 5)  # returns while AP-01's attempt is still on its way
    await p.commands.sends.idle_for("AP-02")
    assert [c.device_id for c in p.sent] == ["AP-02"]
    p.ack(second, "AP-02", state={"powerOn": True, "fanSpeed": 2})
    await asyncio.wait_for(p.perform_queue(), 5)
    assert p.commands.record(second.command_id).status is CommandStatus.ACKED  # type: ignore[union-attr]
    slow.set()
    await p.perform()
    assert [c.device_id for c in p.sent] == ["AP-02", "AP-01"]
    assert p.commands.record(first.command_id).status is CommandStatus.SENT  # type: ignore[union-attr]


async def test_a_devices_attempts_reach_its_link_one_at_a_time_in_order() -> None:
    p = Parts()
    p.online(powerOn=True, fanSpeed=1)
    p.link_gates["AP-01"] = slow = asyncio.Event()
    record = p.commands.submit(request(), p.now)
    await p.perform_queue()
    p.clock.advance(p.commands.executor.timeout + 1)  # no ack: the executor decides a second attempt
    p.commands.tick(p.now)
    await p.perform_queue()
    await wait_for(lambda: p.in_link == 1)  # the first attempt is in the link...
    assert len(p.commands.sends) == 2  # ...and the second waits for it to leave, not beside it
    slow.set()
    await p.perform()
    assert [c.command_id for c in p.sent] == [record.command_id] * 2 and p.most_in_link == 1
