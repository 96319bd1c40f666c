"""The reconciler's back-off and re-drives against a device that never answers, and who the audit log says
sent each command: the embedded broker, the store on disk, a raw MQTT device, and a ManualClock."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from gateway.core.clock import ManualClock
from tests.fixtures.gateway import GatewayFactory, RunningGateway, running, wait_for, write_config
from tests.fixtures.markers import marker_delivered
from tests.fixtures.purifiers import purifier, until
from tests.integration.test_control import NO_API, commands, settle, step
from tests.integration.test_control_edges import ScriptedDevice

# One attempt of 1 s per command: every failure is a timeout, seen by the control timer's tick.
FAST_FAILURES = ("command_timeout_seconds = 1\ncommand_attempts = 1\nretry_backoff_seconds = 5\n"
                 "retry_backoff_max_seconds = 20")


def never_acks(cmd: dict[str, Any]) -> None:
    return None


def gaps(dev: ScriptedDevice, timeout: float = 1.0) -> list[float]:
    """Seconds from each command's timeout to the next command (`ts`: when a command was first sent)."""
    sent = [c["ts"] for c in dev.received]
    return [round(b - (a + timeout), 6) for a, b in itertools.pairwise(sent)]


async def run_for(gw: RunningGateway, clock: ManualClock, seconds: int) -> None:
    for _ in range(seconds):
        await step(gw, clock, 1)


async def test_the_back_off_doubles_after_every_failure_and_is_honoured(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(api=NO_API, clock=clock, control=FAST_FAILURES)
    async with ScriptedDevice(gw, never_acks) as dev:
        await gw.gateway.controller.start_preclean("AP-01", 5, 60, "api")
        await wait_for(lambda: len(dev.received) == 1)
        await run_for(gw, clock, 70)
        await marker_delivered(gw, "AP-01", dev.markers)  # whatever was sent has arrived
    # before: 5, 0, 20, 0 (a timed-out command's stale back-off let the next one through at once)
    assert gaps(dev) == [5, 10, 20, 20]
    await settle(gw)
    assert {row[2] for row in commands(gw, "AP-01")} == {"reconcile/preclean"}


async def test_a_failed_manual_command_is_re_driven_after_the_back_off_until_the_limit(
    gateway_factory: GatewayFactory,
) -> None:
    clock = ManualClock()
    gw = await gateway_factory(api=NO_API, clock=clock, control=FAST_FAILURES + "\nredrive_limit = 3")
    ctl = gw.gateway.controller
    async with ScriptedDevice(gw, never_acks, fan=1) as dev:
        record = ctl.submit_command("AP-01", "setFanSpeed", 4, "api")
        await wait_for(lambda: len(dev.received) == 1)
        await run_for(gw, clock, 60)
        await marker_delivered(gw, "AP-01", dev.markers)
        # before: one command only, until a restart (then retried without end)
        assert [(c["action"], c["value"]) for c in dev.received] == [("setFanSpeed", 4)] * 3
        assert gaps(dev) == [5, 10]  # then the third failure in a row: given up
        ctl.device_ready("AP-01")  # a reconnect is a fresh start
        await wait_for(lambda: len(dev.received) == 4)
        await settle(gw)
    rows = [(row[2], row[3]) for row in commands(gw, "AP-01")]
    # the person's command, then automatic re-drives of the setting it made: not in the person's name
    assert rows == [("api", "timeout"), ("reconcile/manual", "timeout"), ("reconcile/manual", "timeout"),
                    ("reconcile/manual", "sent")]
    assert dev.received[0]["commandId"] == record.command_id
    assert gw.counter("gateway_reconciler_gave_up_total") == 1


async def test_a_restore_after_a_preclean_that_ended_while_down_names_the_preclean(tmp_path: Path) -> None:
    clock = ManualClock()
    config = write_config(tmp_path, api=NO_API)
    async with running(config, clock=clock) as gw, purifier(gw, "AP-01", fan_speed=1) as sim:
        ctl = gw.gateway.controller
        manual = ctl.submit_command("AP-01", "setFanSpeed", 2, "panel")
        assert (await ctl.wait_finished(manual.command_id, 5)).status.value == "acked"
        await ctl.start_preclean("AP-01", 5, 10, "api")
        await until(sim, lambda: sim.model.fan_speed == 5)
        await settle(gw)
    clock.advance(20 * 60)  # the pre-clean ends while the gateway is down
    async with running(config, clock=clock) as gw:
        async with purifier(gw, "AP-01", fan_speed=5) as sim:
            await until(sim, lambda: sim.model.fan_speed == 2)  # the manual setting from before the boost
        await settle(gw)
        # the same label as a restore at run time (tests/integration/test_control.py); before: "panel"
        assert commands(gw, "AP-01")[-1][:3] == ("setFanSpeed", 2, "reconcile/preclean")
