"""Commands, the reconciler, schedules and pre-clean: simulated purifiers over the real embedded broker,
the real store on disk, and a clock the test moves (ManualClock) for timeouts, schedules and expiry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from gateway.core.clock import ManualClock
from tests.fixtures.gateway import (
    GatewayFactory,
    RunningGateway,
    cancel_and_wait,
    device_password,
    running,
    wait_for,
    write_config,
)
from tests.fixtures.markers import is_marker, marker_delivered
from tests.fixtures.purifiers import purifier, until

BERLIN = ZoneInfo("Europe/Berlin")
NO_API = "enabled = false"


def berlin(*args: int) -> float:
    return datetime(*args, tzinfo=BERLIN).timestamp()  # type: ignore[arg-type,misc]


def commands(gw: RunningGateway, device: str) -> list[tuple[Any, ...]]:
    """(action, value, who, status, attempts, note); who: the source, and for an automatic command its cause
    ("reconcile/preclean")."""
    return gw.query("SELECT action, value, source || coalesce('/' || cause, ''), status, attempts, note "
                    "FROM command_log WHERE device_id = ? ORDER BY created_at, rowid", (device,))


def events(gw: RunningGateway, kind: str) -> list[dict[str, Any]]:
    return [json.loads(d) for (d,) in gw.query("SELECT data FROM events WHERE type = ? ORDER BY id", (kind,))]


async def settle(gw: RunningGateway) -> None:
    """Let the control task apply what it queued, then wait for the store."""
    await gw.gateway.controller.drained()
    await gw.flush()


async def step(gw: RunningGateway, clock: ManualClock, seconds: float) -> None:
    clock.advance(seconds)
    gw.gateway.controller.wake()
    await asyncio.sleep(0)
    await settle(gw)


# ------------------------------------------------------------------------------------------ commands


async def test_command_is_acked_and_audited(lan_gateway_factory: GatewayFactory) -> None:
    gw = await lan_gateway_factory(api=NO_API)
    ctl = gw.gateway.controller
    async with purifier(gw, "AP-01", fan_speed=1) as sim:
        record = ctl.submit_command("AP-01", "setFanSpeed", 4, "api")
        done = await ctl.wait_finished(record.command_id, 5)
        assert done.status.value == "acked"
        assert done.state == {"fanSpeed": 4, "powerOn": True}
        assert sim.model.fan_speed == 4
        await settle(gw)
    assert commands(gw, "AP-01") == [("setFanSpeed", 4, "api", "acked", 1, None)]
    result = events(gw, "command.result")
    assert [(e["commandId"], e["status"]) for e in result] == [(record.command_id, "acked")]
    # The ack's state updated the device state at once (before the next reading).
    assert gw.gateway.registry.state("AP-01").last_metrics["fanSpeed"] == 4


async def test_device_that_never_acks_gets_three_attempts_then_timeout(lan_gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await lan_gateway_factory(api=NO_API, clock=clock)
    ctl = gw.gateway.controller
    received: list[dict[str, Any]] = []
    async with aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-02", username="AP-02",
                              password=device_password("AP-02")) as mute:
        await mute.subscribe("device/AP-02/command", qos=1)

        async def listen() -> None:
            async for message in mute.messages:
                assert isinstance(message.payload, bytes)
                received.append(json.loads(message.payload))

        listener = asyncio.create_task(listen())
        await wait_for(lambda: ctl.executor.is_online("AP-02"))
        record = ctl.submit_command("AP-02", "turnOff", None, "api")
        await wait_for(lambda: len(received) == 1)
        for attempt in (2, 3):
            await step(gw, clock, 30.0)
            await wait_for(lambda n=attempt: len(received) == n)  # type: ignore[misc]
        await step(gw, clock, 30.0)
        final = await ctl.wait_finished(record.command_id, 5)
        listener.cancel()
    assert final.status.value == "timeout" and final.attempts == 3
    # every attempt is the same command: same commandId, byte-identical payload
    assert {json.dumps(m, sort_keys=True) for m in received} == {json.dumps(received[0], sort_keys=True)}
    assert received[0]["commandId"] == record.command_id
    await settle(gw)
    assert commands(gw, "AP-02") == [("turnOff", None, "api", "timeout", 3, None)]


async def test_command_to_offline_device_is_applied_when_it_returns(lan_gateway_factory: GatewayFactory) -> None:
    gw = await lan_gateway_factory(api=NO_API)
    ctl = gw.gateway.controller
    record = ctl.submit_command("AP-01", "setFanSpeed", 5, "cloud")
    assert record.status.value == "pending"
    assert record.note is not None and "offline" in record.note
    await settle(gw)
    assert commands(gw, "AP-01")[0][3] == "pending"
    async with purifier(gw, "AP-01", fan_speed=2) as sim:
        done = await ctl.wait_finished(record.command_id, 5)
        assert done.status.value == "acked"
        await until(sim, lambda: sim.model.fan_speed == 5)
    await settle(gw)
    assert commands(gw, "AP-01") == [("setFanSpeed", 5, "cloud", "acked", 1, record.note)]


async def test_bad_ack_is_quarantined_and_unknown_ack_ignored(lan_gateway_factory: GatewayFactory) -> None:
    gw = await lan_gateway_factory(api=NO_API)
    async with aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-01", username="AP-01",
                              password=device_password("AP-01")) as dev:
        await dev.publish("device/AP-01/ack", b"{not json", qos=1)
        await dev.publish("device/AP-01/ack", json.dumps({"commandId": "nobody", "status": "ok"}), qos=1)
        await wait_for(lambda: gw.counter("gateway_acks_ignored_total") == 1)
    await gw.flush()
    reasons = gw.query("SELECT reason FROM quarantine WHERE topic = 'device/AP-01/ack'")
    assert len(reasons) == 1 and "not JSON" in reasons[0][0]


# ------------------------------------------------------------------------------------------ pre-clean


async def test_preclean_boosts_then_restores_manual_speed(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(api=NO_API, clock=clock)
    ctl = gw.gateway.controller
    async with purifier(gw, "AP-01", fan_speed=2) as sim:
        status = await ctl.start_preclean("AP-01", 5, 10, "api")
        assert status.active and status.fan_speed == 5 and status.remaining_seconds == 600
        await until(sim, lambda: sim.model.fan_speed == 5)
        await step(gw, clock, 400)
        assert ctl.preclean_status("AP-01").remaining_seconds == 200
        assert sim.model.fan_speed == 5
        await step(gw, clock, 200)
        await until(sim, lambda: sim.model.fan_speed == 2)  # back to what it ran at before
        assert not ctl.preclean_status("AP-01").active
        await settle(gw)
    ended = events(gw, "preclean.ended")
    assert [e["reason"] for e in ended] == ["expired"]
    assert [e["fanSpeed"] for e in events(gw, "preclean.started")] == [5]
    # the boost and the restore are both automatic, and the pre-clean's doing, in the audit log
    assert [(row[0], row[1], row[2], row[3]) for row in commands(gw, "AP-01")] == [
        ("setFanSpeed", 5, "reconcile/preclean", "acked"), ("setFanSpeed", 2, "reconcile/preclean", "acked")]


async def test_preclean_cancel_restores_at_once(lan_gateway_factory: GatewayFactory) -> None:
    gw = await lan_gateway_factory(api=NO_API)
    ctl = gw.gateway.controller
    async with purifier(gw, "AP-01", fan_speed=1) as sim:
        manual = ctl.submit_command("AP-01", "setFanSpeed", 3, "panel")
        assert (await ctl.wait_finished(manual.command_id, 5)).status.value == "acked"
        await ctl.start_preclean("AP-01", 5, 30, "api")
        await until(sim, lambda: sim.model.fan_speed == 5)
        status = await ctl.cancel_preclean("AP-01", "api")
        assert not status.active
        await until(sim, lambda: sim.model.fan_speed == 3)  # the manual speed set from the panel
        await wait_for(lambda: gw.counter("gateway_commands_finished_total", status="acked") == 3)
    await settle(gw)
    assert [e["reason"] for e in events(gw, "preclean.ended")] == ["cancelled"]
    assert [(row[1], row[2]) for row in commands(gw, "AP-01")] == [
        (3, "panel"), (5, "reconcile/preclean"), (3, "reconcile/preclean")]


async def test_restart_in_the_middle_of_a_preclean_resumes_with_the_time_left(tmp_path: Path) -> None:
    clock = ManualClock()
    config = write_config(tmp_path, api=NO_API)
    async with running(config, clock=clock) as gw, purifier(gw, "AP-01", fan_speed=1) as sim:
        await gw.gateway.controller.start_preclean("AP-01", 4, 20, "api")
        await until(sim, lambda: sim.model.fan_speed == 4)
        await step(gw, clock, 5 * 60)
    clock.advance(60)  # down for a minute
    async with running(config, clock=clock) as gw:
        ctl = gw.gateway.controller
        status = ctl.preclean_status("AP-01")
        assert status.active and status.fan_speed == 4
        assert status.remaining_seconds == pytest.approx(14 * 60)
        async with purifier(gw, "AP-01", fan_speed=4) as sim:
            await step(gw, clock, 14 * 60)
            await until(sim, lambda: sim.model.fan_speed == 1)  # the manual speed from before the boost
        await settle(gw)
        assert [e["reason"] for e in events(gw, "preclean.ended")] == ["expired"]


# ------------------------------------------------------------------------------------------ schedules


async def test_schedule_start_and_end_drive_the_device(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock(berlin(2026, 11, 23, 7, 59))  # a Monday
    gw = await gateway_factory(api=NO_API, clock=clock, timezone="Europe/Berlin")
    ctl = gw.gateway.controller
    async with purifier(gw, "AP-01", fan_speed=1) as sim:
        schedule = await ctl.create_schedule(
            {"device": "AP-01", "days": ["Mon"], "start": "08:00", "end": "09:00", "fanSpeed": 4})
        boundaries = ctl.schedule_boundaries()
        assert set(boundaries) == {f"schedule:{schedule.id}:start", f"schedule:{schedule.id}:end"}
        await step(gw, clock, 60)
        await until(sim, lambda: sim.model.fan_speed == 4)
        await step(gw, clock, 60 * 60)
        await until(sim, lambda: sim.model.fan_speed == 1)
        await settle(gw)
    runs = gw.query("SELECT schedule_id, phase, fan_speed FROM schedule_runs ORDER BY id")
    assert runs == [(schedule.id, "start", 4), (schedule.id, "end", 4)]
    assert [e["phase"] for e in events(gw, "schedule.run")] == ["start", "end"]


async def test_schedules_of_a_device_removed_from_the_config_do_not_run(gateway_factory: GatewayFactory) -> None:
    """They stay stored (the device may come back) but record no runs and events for a device that is gone."""
    clock = ManualClock(berlin(2026, 11, 23, 7, 59))  # a Monday
    gw = await gateway_factory(api=NO_API, clock=clock, timezone="Europe/Berlin")
    await gw.gateway.controller.create_schedule(
        {"device": "AP-02", "days": ["Mon"], "start": "08:00", "end": "09:00", "fanSpeed": 4})
    text = gw.config_path.read_text()
    gw.config_path.write_text(text.split('[[devices]]\nid = "AP-02"')[0])  # AP-02 leaves the building
    assert gw.gateway.reload()
    await step(gw, clock, 60)  # 08:00: its window opens
    await step(gw, clock, 30 * 60)
    await settle(gw)
    assert gw.query("SELECT count(*) FROM schedule_runs") == [(0,)]
    assert events(gw, "schedule.run") == []
    gw.config_path.write_text(text)  # back, inside the window: its run starts now
    assert gw.gateway.reload()
    await step(gw, clock, 60)
    await settle(gw)
    assert gw.query("SELECT device_id, phase FROM schedule_runs") == [("AP-02", "start")]


async def test_window_in_effect_at_startup_applies_at_once(tmp_path: Path) -> None:
    clock = ManualClock(berlin(2026, 11, 23, 7, 0))
    config = write_config(tmp_path, api=NO_API, timezone="Europe/Berlin")
    async with running(config, clock=clock) as gw:
        await gw.gateway.controller.create_schedule(
            {"device": "AP-01", "days": ["Mon"], "start": "06:00", "end": "10:00", "fanSpeed": 3})
    async with running(config, clock=clock) as gw:
        # the timer's boundaries were rebuilt from our own table at start
        assert set(gw.gateway.controller.schedule_boundaries()) == {"schedule:1:start", "schedule:1:end"}
        async with purifier(gw, "AP-01", fan_speed=1) as sim:
            await until(sim, lambda: sim.model.fan_speed == 3)
        await settle(gw)
        # the run that began before the restart is one run, not two
        assert gw.query("SELECT count(*) FROM schedule_runs WHERE phase = 'start'") == [(1,)]


async def test_preclean_ending_inside_a_schedule_restores_the_schedule_speed(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock(berlin(2026, 11, 23, 7, 50))
    gw = await gateway_factory(api=NO_API, clock=clock, timezone="Europe/Berlin")
    ctl = gw.gateway.controller
    async with purifier(gw, "AP-01", fan_speed=1) as sim:
        await ctl.create_schedule({"device": "AP-01", "days": ["Mon"], "start": "08:00", "end": "12:00",
                                   "fanSpeed": 3})
        await ctl.start_preclean("AP-01", 5, 30, "api")  # 07:50 - 08:20; the schedule begins meanwhile
        await until(sim, lambda: sim.model.fan_speed == 5)
        await step(gw, clock, 15 * 60)  # 08:05: schedule active, pre-clean still wins
        assert sim.model.fan_speed == 5
        await step(gw, clock, 15 * 60)  # 08:20: pre-clean over -> the schedule's speed, not the old 1
        await until(sim, lambda: sim.model.fan_speed == 3)
        await step(gw, clock, 4 * 60 * 60)  # 12:20: schedule over -> manual (as before the boost)
        await until(sim, lambda: sim.model.fan_speed == 1)


async def test_overlapping_schedules_highest_speed_wins(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock(berlin(2026, 11, 23, 7, 59))
    gw = await gateway_factory(api=NO_API, clock=clock, timezone="Europe/Berlin")
    ctl = gw.gateway.controller
    async with purifier(gw, "AP-01", fan_speed=1) as sim:
        await ctl.create_schedule({"device": "AP-01", "days": ["Mon"], "start": "08:00", "end": "10:00",
                                   "fanSpeed": 2})
        await ctl.create_schedule({"device": "AP-01", "days": ["Mon"], "start": "09:00", "end": "09:30",
                                   "fanSpeed": 4})
        await step(gw, clock, 60)  # 08:00
        await until(sim, lambda: sim.model.fan_speed == 2)
        await step(gw, clock, 60 * 60)  # 09:00: both active, 4 wins
        await until(sim, lambda: sim.model.fan_speed == 4)
        await step(gw, clock, 30 * 60)  # 09:30: back to the first
        await until(sim, lambda: sim.model.fan_speed == 2)
        await step(gw, clock, 30 * 60)  # 10:00: none
        await until(sim, lambda: sim.model.fan_speed == 1)


@pytest.mark.parametrize(
    ("night", "start", "end", "expect_local_start"),
    [
        ((2026, 3, 29), "02:30", "04:00", "03:30"),  # spring forward: 02:30 does not exist, runs once at 03:30
        ((2026, 10, 25), "02:30", "02:45", "02:30"),  # fall back: 02:30 happens twice, runs once (the first)
    ],
)
async def test_dst_nights_run_each_window_once(
    gateway_factory: GatewayFactory, night: tuple[int, int, int], start: str, end: str, expect_local_start: str
) -> None:
    clock = ManualClock(berlin(*night, 0, 0))
    gw = await gateway_factory(api=NO_API, clock=clock, timezone="Europe/Berlin")
    ctl = gw.gateway.controller
    await ctl.create_schedule({"device": "AP-01", "days": ["Sun"], "start": start, "end": end, "fanSpeed": 3})
    for _ in range(6 * 12):  # walk through the night in 5-minute steps (real elapsed time: 6 hours)
        await step(gw, clock, 300)
    runs = gw.query("SELECT phase, window_start FROM schedule_runs ORDER BY id")
    assert [phase for phase, _ in runs] == ["start", "end"]
    started = datetime.fromtimestamp(runs[0][1], BERLIN)
    assert started.strftime("%H:%M") == expect_local_start


async def test_reconciler_backs_off_after_failures_instead_of_storming(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(api=NO_API, clock=clock, control="retry_backoff_seconds = 60")
    ctl = gw.gateway.controller
    received: list[dict[str, Any]] = []
    markers: list[str] = []
    async with aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-01", username="AP-01",
                              password=device_password("AP-01")) as dev:
        await dev.publish("device/AP-01/data", json.dumps({"fanSpeed": 1, "powerOn": True}), qos=1)
        await dev.subscribe("device/AP-01/command", qos=1)

        async def refuse_everything() -> None:  # a purifier whose fan is jammed
            async for message in dev.messages:
                assert isinstance(message.payload, bytes)
                cmd = json.loads(message.payload)
                if is_marker(cmd):
                    markers.append(cmd["commandId"])
                    continue
                received.append(cmd)
                await dev.publish("device/AP-01/ack", json.dumps(
                    {"commandId": cmd["commandId"], "status": "error", "error": "fan jammed"}), qos=1)

        task = asyncio.create_task(refuse_everything())
        await wait_for(lambda: ctl.executor.is_online("AP-01") and gw.gateway.registry.get("AP-01") is not None
                       and bool(gw.gateway.registry.state("AP-01").last_metrics))
        def failed(n: int) -> Callable[[], bool]:
            return lambda: gw.counter("gateway_commands_finished_total", status="failed") == n

        await ctl.start_preclean("AP-01", 5, 60, "api")
        await wait_for(failed(1))
        for _ in range(5):  # time passes inside the back-off: nothing is sent
            await step(gw, clock, 10)
        await marker_delivered(gw, "AP-01", markers)  # sent after anything the back-off let through
        assert len(received) == 1
        await step(gw, clock, 15)  # 65 s after the failure: one more try
        await wait_for(failed(2))
        await step(gw, clock, 65)  # the back-off doubled to 120 s: still nothing
        await marker_delivered(gw, "AP-01", markers)
        assert len(received) == 2
        await step(gw, clock, 60)
        await wait_for(failed(3))
        await cancel_and_wait(task)
    assert {c["action"] for c in received} == {"setFanSpeed"}
    assert len({c["commandId"] for c in received}) == 3  # each try is a new command, each in the audit log
    await settle(gw)
    assert [row[3] for row in commands(gw, "AP-01")] == ["failed", "failed", "failed"]


async def test_commands_interrupted_by_a_restart_are_closed_and_their_intent_still_applied(tmp_path: Path) -> None:
    config = write_config(tmp_path, api=NO_API)
    async with running(config) as gw:
        record = gw.gateway.controller.submit_command("AP-01", "setFanSpeed", 5, "cloud")  # AP-01 is offline
        await settle(gw)
    async with running(config) as gw:
        await settle(gw)
        rows = gw.query("SELECT status, error FROM command_log WHERE command_id = ?", (record.command_id,))
        assert rows[0][0] == "cancelled" and "restarted" in rows[0][1]  # not "pending" forever
        assert [e["status"] for e in events(gw, "command.result")] == ["cancelled"]
        async with purifier(gw, "AP-01", fan_speed=1) as sim:
            await until(sim, lambda: sim.model.fan_speed == 5)  # the stored manual layer is applied
        await settle(gw)
        rows = [(r[0], r[1], r[2], r[3]) for r in commands(gw, "AP-01")]
        assert rows[0] == ("setFanSpeed", 5, "cloud", "cancelled")
        # the device had never reported its state: the reconciler sets power and speed, as the automatic
        # re-drive of the manual setting (not in the cloud's name)
        assert rows[1:] == [("turnOn", None, "reconcile/manual", "acked"),
                            ("setFanSpeed", 5, "reconcile/manual", "acked")]
