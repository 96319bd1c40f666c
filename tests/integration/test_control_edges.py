"""Control edge cases found in review: each test failed before its fix (see the commit that added it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt

from drivers.mqtt_json import decode_ack
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
from tests.integration.test_control import NO_API, berlin, commands, events, settle, step

Handler = Callable[[dict[str, Any]], dict[str, Any] | None]


class ScriptedDevice:
    """AP-01 as a raw MQTT client that answers each command with `handler(cmd)` (None: no ack)."""

    def __init__(self, gw: RunningGateway, handler: Handler, *, fan: int = 1, power: bool = True) -> None:
        self.gw, self.handler, self.fan, self.power = gw, handler, fan, power
        self.received: list[dict[str, Any]] = []
        self.markers: list[str] = []  # see tests/fixtures/markers.py
        self.client = aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-01", username="AP-01",
                                     password=device_password("AP-01"))
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ScriptedDevice:
        await self.client.__aenter__()
        await self.client.publish("device/AP-01/data", json.dumps({"fanSpeed": self.fan, "powerOn": self.power}), qos=1)
        await self.client.subscribe("device/AP-01/command", qos=1)
        self.task = asyncio.create_task(self._serve())
        ctl, states = self.gw.gateway.controller, self.gw.gateway.registry
        await wait_for(lambda: ctl.executor.is_online("AP-01") and bool(states.state("AP-01").last_metrics))
        return self

    async def _serve(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            cmd = json.loads(message.payload)
            if is_marker(cmd):
                self.markers.append(cmd["commandId"])
                continue
            self.received.append(cmd)
            ack = self.handler(cmd)
            if ack is not None:
                await self.client.publish("device/AP-01/ack", json.dumps(ack), qos=1)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            await cancel_and_wait(self.task)
        await self.client.__aexit__(None, None, None)


async def test_a_failed_plan_step_stops_the_plan_and_backs_off(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()  # frozen: the back-off must hold however much real time passes
    gw = await gateway_factory(api=NO_API, clock=clock, control="retry_backoff_seconds = 60")

    def cover_open(cmd: dict[str, Any]) -> dict[str, Any]:  # refuses turnOn; "accepts" setFanSpeed but stays off
        if cmd["action"] == "turnOn":
            return {"commandId": cmd["commandId"], "status": "error", "error": "cover open",
                    "state": {"fanSpeed": 1, "powerOn": False}}
        return {"commandId": cmd["commandId"], "status": "ok", "state": {"fanSpeed": 0, "powerOn": False}}

    async with ScriptedDevice(gw, cover_open, power=False) as dev:
        await gw.gateway.controller.start_preclean("AP-01", 5, 60, "api")
        await wait_for(lambda: gw.counter("gateway_commands_finished_total", status="failed") == 1)
        await settle(gw)
        await marker_delivered(gw, "AP-01", dev.markers)  # sent after whatever the failure let through
        # before: turnOn failed, setFanSpeed went anyway, its ack lifted the back-off: 44 commands in 2 s
        assert [c["action"] for c in dev.received] == ["turnOn"]


async def test_an_ack_without_state_still_counts_for_the_next_decision(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api=NO_API)
    ctl = gw.gateway.controller
    async with ScriptedDevice(gw, lambda c: {"commandId": c["commandId"], "status": "ok"}) as dev:  # no "state"
        await ctl.start_preclean("AP-01", 5, 30, "api")
        await wait_for(lambda: gw.counter("gateway_commands_finished_total", status="acked") == 1)
        await ctl.cancel_preclean("AP-01", "api")
        # before: the gateway still believed 1 and sent nothing; the purifier stayed at 5
        await wait_for(lambda: [(c["action"], c["value"]) for c in dev.received] == [("setFanSpeed", 5),
                                                                                       ("setFanSpeed", 1)])


async def test_a_layer_change_in_the_same_turn_as_an_ack_sees_the_acked_state(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api=NO_API)
    ctl = gw.gateway.controller
    async with ScriptedDevice(gw, lambda c: None):  # acks come from the test itself
        await ctl.start_preclean("AP-01", 5, 30, "api")
        await wait_for(lambda: ctl.executor.in_flight("AP-01") is not None)
        flight = ctl.executor.in_flight("AP-01")
        assert flight is not None
        ack = {"commandId": flight.command_id, "status": "ok", "state": {"fanSpeed": 5, "powerOn": True}}
        await ctl.on_ack("AP-01", decode_ack(json.dumps(ack).encode()), 0)
        await ctl.cancel_preclean("AP-01", "api")  # before the control task ran the ack's effects
        await wait_for(lambda: any(r[:2] == ("setFanSpeed", 1) for r in commands(gw, "AP-01")))


async def test_a_wall_clock_step_is_noticed_within_a_minute(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock(berlin(2026, 11, 23, 7, 0))
    gw = await gateway_factory(api=NO_API, clock=clock, timezone="Europe/Berlin")
    ctl = gw.gateway.controller
    await ctl.create_schedule({"device": "AP-01", "days": ["Mon"], "start": "08:00", "end": "09:00", "fanSpeed": 4})
    delay = ctl.next_wakeup_delay()
    assert delay is not None and delay <= 60  # before: it slept until 08:00 by the monotonic clock, ~1 h
    clock.advance(3660)  # NTP steps the clock at boot: no wake() this time
    assert ctl.next_wakeup_delay() == 0.0


async def test_status_offline_then_online_on_one_connection_takes_commands_again(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(api=NO_API)
    ctl = gw.gateway.controller
    async with ScriptedDevice(gw, lambda c: {"commandId": c["commandId"], "status": "ok"}) as dev:
        await dev.client.publish("device/AP-01/status", b"offline", qos=1, retain=True)
        await wait_for(lambda: not ctl.executor.is_online("AP-01"))
        await dev.client.publish("device/AP-01/status", b"online", qos=1, retain=True)
        await wait_for(lambda: ctl.executor.is_online("AP-01"))  # before: queued until a reconnect
        record = ctl.submit_command("AP-01", "setFanSpeed", 3, "api")
        assert (await ctl.wait_finished(record.command_id, 5)).status.value == "acked"


async def test_a_window_that_ended_while_the_gateway_was_down_gets_its_end(tmp_path: Path) -> None:
    clock = ManualClock(berlin(2026, 11, 23, 7, 59))
    config = write_config(tmp_path, api=NO_API, timezone="Europe/Berlin")
    async with running(config, clock=clock) as gw:
        await gw.gateway.controller.create_schedule(
            {"device": "AP-01", "days": ["Mon"], "start": "08:00", "end": "09:00", "fanSpeed": 4})
        await step(gw, clock, 60 * 31)  # 08:30
    clock.advance(60 * 60)  # down until 09:30
    async with running(config, clock=clock) as gw:
        await settle(gw)
        assert gw.query("SELECT phase FROM schedule_runs ORDER BY id") == [("start",), ("end",)]
        assert [e["phase"] for e in events(gw, "schedule.run")] == ["start", "end"]


async def test_an_outranked_window_is_one_run_not_two(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock(berlin(2026, 11, 23, 7, 59))
    gw = await gateway_factory(api=NO_API, clock=clock, timezone="Europe/Berlin")
    ctl = gw.gateway.controller
    a = await ctl.create_schedule({"device": "AP-01", "days": ["Mon"], "start": "08:00", "end": "10:00",
                                   "fanSpeed": 2})
    b = await ctl.create_schedule({"device": "AP-01", "days": ["Mon"], "start": "09:00", "end": "09:30",
                                   "fanSpeed": 4})
    for minutes in (1, 30, 30, 30, 30):
        await step(gw, clock, minutes * 60)
    tz = ZoneInfo("Europe/Berlin")
    rows = [(sid, phase, datetime.fromtimestamp(at, tz).strftime("%H:%M"))
            for sid, phase, at in gw.query("SELECT schedule_id, phase, at FROM schedule_runs ORDER BY id")]
    # before: A "ended" at 09:00 when B outranked it and "started" again at 09:30
    assert rows == [(a.id, "start", "08:00"), (b.id, "start", "09:00"), (b.id, "end", "09:30"),
                    (a.id, "end", "10:00")]


async def test_a_restore_that_sent_nothing_does_not_claim_later_commands(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(api=NO_API, clock=clock)
    ctl = gw.gateway.controller
    states = gw.gateway.registry
    async with purifier(gw, "AP-01", fan_speed=2) as sim:
        manual = ctl.submit_command("AP-01", "setFanSpeed", 2, "panel")
        await ctl.wait_finished(manual.command_id, 5)
        await ctl.start_preclean("AP-01", 5, 10, "api")
        await until(sim, lambda: sim.model.fan_speed == 5)
        await wait_for(lambda: gw.counter("gateway_commands_finished_total", status="acked") == 2)
        await settle(gw)
        states.report("AP-01", {"fanSpeed": 2})  # someone pressed a button
        await step(gw, clock, 600)  # the pre-clean ends: nothing to restore
        states.report("AP-01", {"fanSpeed": 0})  # later, a reboot at 0
        ctl.device_ready("AP-01")
        await until(sim, lambda: sim.model.fan_speed == 2)
        await settle(gw)
    assert commands(gw, "AP-01")[-1][2] == "reconcile/manual"  # before: "preclean", long after it ended


async def test_an_interrupted_command_that_cannot_be_carried_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, api=NO_API)
    async with running(config) as gw:
        gw.gateway.controller.submit_command("AP-01", "turnOff", None, "cloud")  # never seen: speed unknown
        await settle(gw)
    async with running(config) as gw:
        await settle(gw)
        (error,) = gw.query("SELECT error FROM command_log")[0]
        assert "not carried out" in error  # before: it promised to apply a state nobody had stored
