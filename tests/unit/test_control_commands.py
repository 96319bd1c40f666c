"""The command executor's pure state machine (CONTRACT section 1)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from drivers.mqtt_json import decode_ack as parse_ack
from drivers.mqtt_json import encode_command
from gateway.control.command_model import (
    Audit,
    CommandError,
    CommandQueueFull,
    CommandRequest,
    CommandStatus,
    Effect,
    Finished,
    Ignored,
    Send,
    StateReported,
)
from gateway.control.commands import CommandExecutor
from gateway.core.clock import ManualClock
from gateway.core.device_commands import Ack
from gateway.core.errors import PayloadError
from gateway.core.topics import command_topic

DEV = "AP-01"


def req(device: str = DEV, action: str = "setFanSpeed", value: Any = 3, cid: str = "c-1",
        source: str = "api") -> CommandRequest:
    return CommandRequest.create(device, action, value, source=source, command_id=cid)


def ok(cid: str, **state: Any) -> Ack:
    return parse_ack({"commandId": cid, "status": "ok", "state": state or {"fanSpeed": 3, "powerOn": True}})


def of(effects: list[Effect], kind: type) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def online_executor(clock: ManualClock, *devices: str) -> CommandExecutor:
    ex = CommandExecutor()
    for d in devices or (DEV,):
        assert ex.device_online(d, clock.now()) == []
    return ex


# ------------------------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("", "turnOn", None), "device"),
        ((DEV, "reboot", None), "action"),
        ((DEV, "setFanSpeed", 6), "value"),
        ((DEV, "setFanSpeed", -1), "value"),
        ((DEV, "setFanSpeed", None), "value"),
        ((DEV, "setFanSpeed", True), "value"),
        ((DEV, "setFanSpeed", 2.5), "value"),
        ((DEV, "turnOn", 1), "value"),
        ((DEV, "turnOff", 0), "value"),
    ],
)
def test_invalid_requests_name_the_field(args: tuple[Any, Any, Any], field: str) -> None:
    with pytest.raises(CommandError) as info:
        CommandRequest.create(*args, source="api")
    assert info.value.field == field


def test_request_source_and_generated_id() -> None:
    with pytest.raises(CommandError, match="source"):
        CommandRequest.create(DEV, "turnOn", source="nobody")
    a = CommandRequest.create(DEV, "turnOn", source="schedule")
    b = CommandRequest.create(DEV, "turnOn", source="schedule")
    assert a.command_id != b.command_id and len(a.command_id) == 36
    assert CommandRequest.create(DEV, "setFanSpeed", 0, source="rule").value == 0


# ------------------------------------------------------------------------------------------------ acks


def test_parse_ack_ok_and_error() -> None:
    a = parse_ack(b'{"commandId": "c-1", "status": "ok", "state": {"fanSpeed": 4.0, "powerOn": true}, "rssi": 5}')
    assert a == Ack("c-1", True, None, {"fanSpeed": 4, "powerOn": True}, {"rssi": 5})
    e = parse_ack({"commandId": "c-1", "status": "error", "error": "motor stalled"})
    assert (e.ok, e.error, e.state) == (False, "motor stalled", None)
    assert parse_ack('{"commandId": "c", "status": "error"}').error == "device reported an error without a reason"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"status": "ok"}', "ack.commandId"),
        (b'{"commandId": "", "status": "ok"}', "ack.commandId"),
        (b'{"commandId": 5, "status": "ok"}', "ack.commandId"),
        (b'{"commandId": "c", "status": "done"}', "ack.status"),
        (b'{"commandId": "c", "status": "error", "error": 42}', "ack.error"),
        (b'{"commandId": "c", "status": "ok", "state": []}', "ack.state"),
        (b'{"commandId": "c", "status": "ok", "state": {"fanSpeed": 9}}', "ack.state.fanSpeed"),
        (b'{"commandId": "c", "status": "ok", "state": {"fanSpeed": true}}', "ack.state.fanSpeed"),
        (b'{"commandId": "c", "status": "ok", "state": {"fanSpeed": 2.5}}', "ack.state.fanSpeed"),
        (b'{"commandId": "c", "status": "ok", "state": {"powerOn": "yes"}}', "ack.state.powerOn"),
    ],
)
def test_parse_ack_rejects_with_a_quarantine_reason(payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_ack(payload)


# ---------------------------------------------------------------------------------------- the machine


def test_acked_path() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    effects = ex.submit(req(), clock.now())
    assert [type(e) for e in effects] == [Audit, Send, Audit]
    assert effects[0].record.status == CommandStatus.PENDING  # type: ignore[union-attr]
    pub = effects[1]
    assert isinstance(pub, Send)
    assert pub.command.device_id == DEV and pub.attempt == 1
    body = json.loads(encode_command(pub.command))
    assert body == {"commandId": "c-1", "action": "setFanSpeed", "value": 3, "ts": clock.now()}
    assert ex.in_flight(DEV) is not None and ex.in_flight(DEV).status == CommandStatus.SENT  # type: ignore[union-attr]
    assert ex.next_deadline() == clock.now() + 30

    clock.advance(0.2)
    effects = ex.ack(DEV, ok("c-1", fanSpeed=3, powerOn=True), clock.now())
    assert of(effects, StateReported) == [StateReported(DEV, {"fanSpeed": 3, "powerOn": True}, clock.now())]
    (done,) = of(effects, Finished)
    r = done.record
    assert (r.status, r.attempts, r.error, r.state, r.source) == (CommandStatus.ACKED, 1, None,
                                                                  {"fanSpeed": 3, "powerOn": True}, "api")
    assert (r.sent_at, r.finished_at) == (clock.now() - 0.2, clock.now())
    assert [a.change for a in of(effects, Audit)] == ["acked"]
    assert ex.in_flight(DEV) is None and ex.next_deadline() is None and ex.get("c-1") is None


def test_error_ack_marks_failed_with_reason() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    ex.submit(req(), clock.now())
    effects = ex.ack(DEV, parse_ack({"commandId": "c-1", "status": "error", "error": "busy"}), clock.now())
    (done,) = of(effects, Finished)
    assert (done.record.status, done.record.error) == (CommandStatus.FAILED, "busy")
    assert of(effects, StateReported) == []


def test_never_acked_exactly_three_sends_then_timeout() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    publishes = of(ex.submit(req(), clock.now()), Send)
    finished: list[Finished] = []
    for _ in range(10 * 60):  # ten minutes in 1 s steps: deadlines come from the clock, not from sleeping
        clock.advance(1.0)
        effects = ex.tick(clock.now())
        publishes += of(effects, Send)
        finished += of(effects, Finished)
    assert [p.attempt for p in publishes] == [1, 2, 3]
    assert {p.command_id for p in publishes} == {"c-1"}
    assert len({encode_command(p.command) for p in publishes}) == 1  # identical payload on every retry
    (done,) = finished
    assert (done.record.status, done.record.attempts) == (CommandStatus.TIMEOUT, 3)
    assert done.record.finished_at == done.record.sent_at + 90  # type: ignore[operator]
    assert ex.next_deadline() is None


def test_retry_exactly_at_the_deadline_and_not_before() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    ex.submit(req(), clock.now())
    assert ex.tick(clock.now() + 29.999) == []
    effects = ex.tick(clock.now() + 30)
    assert [e.change for e in of(effects, Audit)] == ["retried"]
    assert ex.in_flight(DEV).attempts == 2  # type: ignore[union-attr]


def test_ack_after_a_retry_completes_the_command() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    ex.submit(req(), clock.now())
    clock.advance(30)
    ex.tick(clock.now())
    clock.advance(1)
    (done,) = of(ex.ack(DEV, ok("c-1"), clock.now()), Finished)
    assert (done.record.status, done.record.attempts) == (CommandStatus.ACKED, 2)


def test_offline_device_keeps_command_pending_until_online() -> None:
    clock = ManualClock()
    ex = CommandExecutor()
    effects = ex.submit(req(), clock.now())
    assert [type(e) for e in effects] == [Audit]
    audit = effects[0]
    assert isinstance(audit, Audit) and audit.change == "queued"
    assert audit.record.status == CommandStatus.PENDING and "offline" in (audit.record.note or "")
    clock.advance(3600)
    assert ex.tick(clock.now()) == []  # no timeout for a command that was never sent
    assert ex.pending(DEV)[0].status == CommandStatus.PENDING

    effects = ex.device_online(DEV, clock.now())
    (pub,) = of(effects, Send)
    (sent,) = of(effects, Audit)
    assert pub.command_id == "c-1" and sent.record.status == CommandStatus.SENT
    assert sent.record.sent_at == clock.now() and "offline" in (sent.record.note or "")  # the audit says so
    (done,) = of(ex.ack(DEV, ok("c-1"), clock.now()), Finished)
    assert done.record.status == CommandStatus.ACKED


def test_retry_due_while_offline_is_deferred_not_spent() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    ex.submit(req(), clock.now())
    ex.device_offline(DEV, clock.now())
    clock.advance(600)
    assert ex.tick(clock.now()) == []
    assert ex.in_flight(DEV).attempts == 1  # type: ignore[union-attr]
    assert ex.next_deadline() is None  # nothing to wake up for until the device returns
    effects = ex.device_online(DEV, clock.now())
    assert [p.attempt for p in of(effects, Send)] == [2]
    assert ex.next_deadline() == clock.now() + 30


def test_last_attempt_times_out_even_when_offline() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    ex.submit(req(), clock.now())
    for _ in range(2):
        clock.advance(30)
        ex.tick(clock.now())
    ex.device_offline(DEV, clock.now())
    clock.advance(30)
    (done,) = of(ex.tick(clock.now()), Finished)
    assert (done.record.status, done.record.attempts) == (CommandStatus.TIMEOUT, 3)


def test_one_in_flight_per_device_fifo() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    assert len(of(ex.submit(req(cid="a"), clock.now()), Send)) == 1
    assert of(ex.submit(req(cid="b", value=4), clock.now()), Send) == []
    assert of(ex.submit(req(cid="c", action="turnOff", value=None), clock.now()), Send) == []
    assert [r.command_id for r in ex.pending(DEV)] == ["b", "c"]
    assert [p.command_id for p in of(ex.ack(DEV, ok("a"), clock.now()), Send)] == ["b"]
    clock.advance(90)
    effects = ex.tick(clock.now())  # b: deadline of attempt 1 passed -> retry, not yet c
    assert [p.command_id for p in of(effects, Send)] == ["b"]
    clock.advance(60)
    ex.tick(clock.now())
    clock.advance(30)
    effects = ex.tick(clock.now())  # b times out, c goes out at once
    assert [f.record.status for f in of(effects, Finished)] == [CommandStatus.TIMEOUT]
    assert [(p.command_id, p.attempt) for p in of(effects, Send)] == [("c", 1)]
    assert json.loads(encode_command(of(effects, Send)[0].command))["value"] is None


def test_ack_for_unknown_finished_foreign_or_pending_command_is_ignored_and_reported() -> None:
    clock = ManualClock()
    ex = online_executor(clock, DEV, "AP-02")
    assert of(ex.ack(DEV, ok("nope"), clock.now()), Ignored)[0].reason == "unknown command"

    ex.submit(req(cid="a"), clock.now())
    ex.submit(req(cid="b"), clock.now())
    (ign,) = ex.ack("AP-02", ok("a"), clock.now())  # someone else's command
    assert isinstance(ign, Ignored) and "belongs to device 'AP-01'" in ign.reason
    (ign,) = ex.ack(DEV, ok("b"), clock.now())
    assert isinstance(ign, Ignored) and "pending" in ign.reason
    assert ex.in_flight(DEV).command_id == "a"  # type: ignore[union-attr]

    ex.ack(DEV, ok("a"), clock.now())
    effects = ex.ack(DEV, ok("a"), clock.now())  # a device re-acks a repeated commandId
    assert effects == [Ignored(DEV, "a", "command already finished (acked)", ok("a"))]


def test_late_ack_after_timeout_is_ignored() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    ex.submit(req(), clock.now())
    for _ in range(3):
        clock.advance(30)
        ex.tick(clock.now())
    assert ex.in_flight(DEV) is None
    (ign,) = ex.ack(DEV, ok("c-1"), clock.now())
    assert isinstance(ign, Ignored) and ign.reason == "command already finished (timeout)"
    assert ign.ack is not None and ign.ack.state == {"fanSpeed": 3, "powerOn": True}


def test_hundred_devices_all_in_flight_concurrently() -> None:
    clock = ManualClock()
    devices = [f"AP-{i:03d}" for i in range(100)]
    ex = online_executor(clock, *devices)
    publishes: list[Send] = []
    for i, d in enumerate(devices):
        publishes += of(ex.submit(req(device=d, cid=f"c-{i}", value=i % 6), clock.now()), Send)
    assert len(publishes) == 100
    assert {command_topic(p.command.device_id) for p in publishes} == {f"device/{d}/command" for d in devices}
    assert all(ex.in_flight(d) is not None for d in devices)
    clock.advance(0.5)
    finished: list[Finished] = []
    for i, d in reversed(list(enumerate(devices))):  # acks arrive in any order
        finished += of(ex.ack(d, ok(f"c-{i}", fanSpeed=i % 6, powerOn=True), clock.now()), Finished)
    assert len(finished) == 100 and {f.record.status for f in finished} == {CommandStatus.ACKED}
    assert len({f.record.command_id for f in finished}) == 100
    assert ex.tick(clock.now() + 1000) == []


def test_cancel_pending_and_in_flight() -> None:
    clock = ManualClock()
    ex = online_executor(clock)
    ex.submit(req(cid="a"), clock.now())
    ex.submit(req(cid="b"), clock.now())
    ex.submit(req(cid="c"), clock.now())
    effects = ex.cancel("b", clock.now())
    assert [f.record.status for f in of(effects, Finished)] == [CommandStatus.CANCELLED]
    assert of(effects, Send) == []
    effects = ex.cancel("a", clock.now(), reason="superseded by c")
    (done,) = of(effects, Finished)
    assert (done.record.status, done.record.error) == (CommandStatus.CANCELLED, "superseded by c")
    assert [p.command_id for p in of(effects, Send)] == ["c"]
    assert ex.cancel("a", clock.now()) == []
    assert ex.cancel("zzz", clock.now()) == []


def test_cancel_pending_supersedes_a_queue() -> None:
    clock = ManualClock()
    ex = CommandExecutor()
    for i in range(3):
        ex.submit(req(cid=f"c{i}"), clock.now())
    effects = ex.cancel_pending(DEV, clock.now())
    assert [f.record.command_id for f in of(effects, Finished)] == ["c0", "c1", "c2"]
    assert ex.pending(DEV) == [] and ex.device_online(DEV, clock.now()) == []
    assert ex.cancel_pending("unknown", clock.now()) == []


def test_queue_bound_and_duplicate_ids() -> None:
    clock = ManualClock()
    ex = CommandExecutor(max_pending=2)
    ex.submit(req(cid="a"), clock.now())
    ex.submit(req(cid="b"), clock.now())
    with pytest.raises(CommandQueueFull):
        ex.submit(req(cid="c"), clock.now())
    assert [r.command_id for r in ex.pending(DEV)] == ["a", "b"]
    with pytest.raises(CommandError, match="already submitted"):
        ex.submit(req(cid="a"), clock.now())


def test_settings_are_checked_and_configurable() -> None:
    with pytest.raises(ValueError):
        CommandExecutor(attempts=0)
    clock = ManualClock()
    ex = CommandExecutor(timeout=5, attempts=1)
    ex.device_online(DEV, clock.now())
    ex.submit(req(), clock.now())
    (done,) = of(ex.tick(clock.now() + 5), Finished)
    assert (done.record.status, done.record.attempts) == (CommandStatus.TIMEOUT, 1)
