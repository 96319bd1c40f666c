"""A Modbus bus against simulated slaves over a real pty (and over TCP): pymodbus RTU framing end to end.

Scheduling decisions read a ManualClock (moved by the test, then `poll_due()`); the answers' timeouts are
real, since they are the serial line's.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from firmware_sim.modbus_server import SimBus
from firmware_sim.modbus_slaves import Fault, load_slave

from drivers.modbus.bus import BusConfig, BusDown, ModbusBus
from drivers.modbus.register_maps import load_map
from drivers.modbus.slaves import LogicalDevice, SlaveConfig
from gateway.core.clock import ManualClock, SystemClock
from gateway.core.device_commands import OutgoingCommand, SetFanSpeed, TurnOff
from gateway.core.links import LinkError
from gateway.core.metrics import Metrics
from gateway.core.supervisor import Health, Supervisor
from gateway.core.tasks import cancel_until_done
from tests.fixtures.gateway import wait_for
from tests.fixtures.modbus import MAPS, RecordingIntake, SimLine, make_bus


@contextlib.asynccontextmanager
async def opened(bus: ModbusBus) -> AsyncIterator[ModbusBus]:
    """The bus's port open, without its poll loop: the test polls (`poll_due`) when it moved the clock."""
    await bus.open()
    try:
        yield bus
    finally:
        bus.close()


async def test_several_slaves_on_one_bus_answer_with_their_maps(sim_line: SimLine) -> None:
    intake = RecordingIntake()
    clock = ManualClock()
    bus = make_bus(str(sim_line.path), intake=intake, clock=clock)
    async with opened(bus):
        assert await bus.poll_due() == 4
    co2 = intake.of("co2-1")[0].metrics
    assert 400 <= co2["co2"] <= 900 and co2["meter_status"] >= 0
    meter = intake.of("meter-3")[0].metrics
    assert 225 < meter["phase_1_line_to_neutral_volts"] < 235  # type: ignore[operator]
    assert len(meter) == 102
    purifier = intake.of("purifier-4")[0].metrics
    assert purifier["fanSpeed"] == 2 and purifier["powerOn"] is True
    assert [d for d, online, _ in intake.presence_log if online] == ["co2-1", "pm-2", "meter-3", "purifier-4"]
    assert sorted(intake.ready) == ["co2-1", "meter-3", "pm-2", "purifier-4"]
    # merged reads: the SDM630's 102 points in a few requests, each within its 80-register limit
    sdm = bus.slaves[2]
    assert sdm.stats.requests == len(sdm.plan) <= 10


async def test_a_silent_slave_costs_its_timeout_once_per_cycle_and_backs_off(sim_line: SimLine) -> None:
    sim_line.slave(2).fault = Fault("silent")
    intake = RecordingIntake()
    clock = ManualClock()
    bus = make_bus(str(sim_line.path), intake=intake, clock=clock, timeout=0.3, interval=10.0, offline_after=2)
    qsa = bus.slaves[1]
    loop = asyncio.get_running_loop()
    async with opened(bus):
        assert await bus.poll_due() == 4
        assert len(intake.readings) == 3
        assert sim_line.slave(2).requests == 1  # one request, one timeout; its other reads are skipped
        for slave in bus.slaves:  # the same cycle with the slave answering, for comparison
            slave.due = clock.monotonic()
        sim_line.slave(2).fault = Fault("none")
        started = loop.time()
        assert await bus.poll_due() == 4
        healthy_cycle = loop.time() - started
        sim_line.slave(2).fault = Fault("silent")
        clock.advance(10.0)
        started = loop.time()
        assert await bus.poll_due() == 4
        silent_cycle = loop.time() - started
        assert sim_line.slave(2).requests == 1 + len(qsa.plan) + 1
        # what the silent slave added is its one timeout (0.3 s); the bound is loose for a busy machine
        assert silent_cycle < healthy_cycle + 0.3 + 1.0
        clock.advance(10.0)
        assert await bus.poll_due() == 4
        assert intake.online("pm-2") is False  # offline after 2 failed polls in a row
        # back-off: after the 2nd failure the next try waits 2 intervals, after the 3rd 4; the others keep theirs
        polled = []
        for _ in range(6):
            clock.advance(10.0)
            polled.append(await bus.poll_due())
        assert polled == [3, 4, 3, 3, 3, 4]
        assert sim_line.slave(2).requests == 1 + len(qsa.plan) + 4
        assert len(intake.of("co2-1")) == len(intake.of("meter-3")) == 10
        assert qsa.stats.timeouts == 5


async def test_garbled_and_slow_answers_and_exceptions(sim_line: SimLine) -> None:
    sim_line.slave(1).fault = Fault("garbled")  # every answer with a broken CRC: rejected, so no answer
    sim_line.slave(2).fault = Fault("slow", slow_ms=100)  # slower than usual, within its timeout
    sim_line.slave(3).fault = Fault("exception", exception_code=4)
    intake = RecordingIntake()
    metrics = Metrics()
    bus = make_bus(str(sim_line.path), intake=intake, clock=ManualClock(), timeout=0.3, metrics=metrics)
    async with opened(bus):
        assert await bus.poll_due() == 4
    assert intake.of("co2-1") == [] and bus.slaves[0].stats.timeouts == 1 and bus.slaves[0].failures == 1
    assert len(intake.of("pm-2")) == 1
    assert intake.of("meter-3") == [] and intake.online("meter-3") is True  # it answers, with exceptions
    assert bus.slaves[2].stats.exceptions == {4: len(bus.slaves[2].plan)}
    assert metrics.value("gateway_modbus_exceptions_total", bus="test-bus", slave="3", code="4") == len(
        bus.slaves[2].plan)


async def test_write_then_read_back_is_the_acknowledgement(sim_line: SimLine) -> None:
    intake = RecordingIntake()
    bus = make_bus(str(sim_line.path), intake=intake, clock=ManualClock(), timeout=0.2, retries=2)
    purifier = sim_line.slave(4)
    async with opened(bus):
        await bus.poll_due()
        assert bus.command_ready("purifier-4")
        before = purifier.requests
        ack = await bus.send(OutgoingCommand("c-1", "purifier-4", SetFanSpeed(4), 0.0))
        assert ack.ok and ack.state == {"fanSpeed": 4} and purifier.registers["holding"][0] == 4
        assert purifier.requests == before + 2  # the write, the read-back
        # the write's answer is lost once: the same write again, then the read-back
        purifier.fault = Fault("garbled", count=1)
        ack = await bus.send(OutgoingCommand("c-2", "purifier-4", TurnOff(), 0.0))
        assert ack.ok and ack.state == {"powerOn": False} and purifier.bits["coil"][0] is False
        assert purifier.requests == before + 5
        # out of the point's range: refused before anything goes on the line
        ack = await bus.send(OutgoingCommand("c-3", "purifier-4", SetFanSpeed(9), 0.0))
        assert not ack.ok and ack.error == "fanSpeed 9 is above the point's max_value 5"
        assert purifier.requests == before + 5
        # a slave that never answers: not sent (the command service retries at its deadline)
        purifier.fault = Fault("silent")
        with pytest.raises(LinkError, match="no answer"):
            await bus.send(OutgoingCommand("c-4", "purifier-4", SetFanSpeed(1), 0.0))
        assert purifier.requests == before + 5 + 3  # 1 + retries attempts
        # a slave that answers the write with an exception refuses the command
        purifier.fault = Fault("exception", exception_code=6)
        ack = await bus.send(OutgoingCommand("c-5", "purifier-4", SetFanSpeed(1), 0.0))
        assert not ack.ok and ack.error == "device refused the write: exception 6"


async def test_a_multi_port_rtu_is_several_logical_devices(tmp_path: Path) -> None:
    """A 4-port RTU: the same two points per port, 10 registers apart; one device per room."""
    channel = '[[points]]\nname = "CO2"\nmetric = "co2"\naddress = {a}\ninput_type = "input"\n' \
              '[[points]]\nname = "Temperature"\nmetric = "temperature"\naddress = {b}\ninput_type = "input"\n' \
              'data_type = "int16"\nscale = 0.1\nprecision = 1\n'
    gateway_map = tmp_path / "rtu_port.toml"
    gateway_map.write_text('name = "4-port RTU, one port"\nmax_gap = 8\n' + channel.format(a=0, b=1))
    device_map = tmp_path / "rtu_device.toml"  # what the simulated RTU serves: all four ports
    device_map.write_text('name = "4-port RTU"\nmax_gap = 8\n' + "".join(
        channel.format(a=10 * n, b=10 * n + 1).replace('name = "CO2"', f'name = "CO2 {n}"')
        .replace('metric = "co2"', f'metric = "co2_{n}"').replace('name = "Temperature"', f'name = "T {n}"')
        .replace('metric = "temperature"', f'metric = "t_{n}"') for n in range(4)))
    sim_slave = load_slave(7, str(device_map), MAPS)
    for n in range(4):
        sim_slave.registers["input"][10 * n] = 500 + n
        sim_slave.written.add(("input", 10 * n))
    sim = SimBus([sim_slave])
    server = await sim.serve_tcp("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rooms = tuple(LogicalDevice(f"room-{101 + n}", "modbus-sensor", 10 * n) for n in range(4))
    intake = RecordingIntake()
    bus = ModbusBus(BusConfig("rtu", f"socket://127.0.0.1:{port}", timeout=0.5),
                    [SlaveConfig(7, load_map(gateway_map), rooms, 10.0, 0.5)], intake=intake,
                    clock=ManualClock(), metrics=Metrics())
    try:
        async with opened(bus):
            assert await bus.poll_due() == 1
    finally:
        server.close()
        await server.wait_closed()
    assert bus.slaves[0].stats.requests == 1  # all four rooms in one read over RTU-over-TCP
    for n in range(4):
        (reading,) = intake.of(f"room-{101 + n}")
        assert reading.metrics["co2"] == 500 + n and set(reading.metrics) == {"co2", "temperature"}
        assert intake.online(f"room-{101 + n}") is True


async def test_an_unplugged_port_is_reopened_by_the_supervisor(sim_line: SimLine) -> None:
    intake = RecordingIntake()
    bus = make_bus(str(sim_line.path), [(4, "rs485_purifier.toml", "purifier-4")], intake=intake,
                   clock=SystemClock(), timeout=0.2, interval=0.05)
    supervisor = Supervisor(clock=SystemClock(), metrics=Metrics(), initial_backoff=0.05, max_backoff=0.2,
                            jitter=lambda: 1.0)
    async with asyncio.TaskGroup() as tg:
        task = supervisor.start(tg, "modbus:test-bus", bus.run)
        try:
            await wait_for(lambda: len(intake.readings) >= 2)
            sim_line.port.unplug()
            await wait_for(lambda: supervisor.health["modbus:test-bus"].state == "failing")
            assert intake.online("purifier-4") is False and not bus.command_ready("purifier-4")
            assert "BusDown" in (supervisor.health["modbus:test-bus"].last_error or "")
            count = len(intake.readings)
            sim_line.port.replug()
            await wait_for(lambda: len(intake.readings) > count + 1, timeout=10)
            assert supervisor.health["modbus:test-bus"].state == "up"
            assert intake.online("purifier-4") is True
        finally:
            supervisor.stop()
            await cancel_until_done([task], 5)


async def test_a_port_that_cannot_be_opened_fails_the_run(tmp_path: Path) -> None:
    bus = make_bus(str(tmp_path / "no-such-tty"), intake=RecordingIntake())
    with pytest.raises(BusDown, match="cannot open"):
        await bus.run(Health("test"))


async def test_the_simulator_command_serves_its_slaves_and_faults_on_a_pty(tmp_path: Path) -> None:
    """`edge-gateway-sim modbus` as an installer runs it: the default slaves, one of them silent."""
    path = tmp_path / "ttySIM"
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_sim", "modbus", "--pty", str(path), "--fault", "2=silent", "--duration", "30",
        stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for(path.exists, timeout=10)
        intake = RecordingIntake()
        bus = make_bus(str(path), intake=intake, clock=ManualClock(), timeout=0.3)
        async with opened(bus):
            assert await bus.poll_due() == 4
        assert {r.device_id for r in intake.readings} == {"co2-1", "meter-3", "purifier-4"}
        assert bus.slaves[1].stats.timeouts == 1
    finally:
        sim.terminate()
        _, stderr = await asyncio.wait_for(sim.communicate(), 10)
    assert sim.returncode == 0, stderr.decode()
    served = f"slave 1: {len(bus.slaves[0].plan)} requests, slave 2: 1 requests, slave 3: {len(bus.slaves[2].plan)}"
    assert served.encode() in stderr


async def test_the_link_supervises_each_bus_apart_and_routes_commands(sim_line: SimLine) -> None:
    """Two buses (a pty, and RTU over TCP): the pty's loss leaves the other bus polling and commandable."""
    from drivers.modbus.link import ModbusLink
    from gateway.core.links import DeviceLinks

    tcp_sim = SimBus([load_slave(9, "purifier", MAPS)])
    server = await tcp_sim.serve_tcp("127.0.0.1", 0)
    tcp_port = server.sockets[0].getsockname()[1]
    intake = RecordingIntake()
    clock = SystemClock()
    pty_bus = make_bus(str(sim_line.path), [(4, "rs485_purifier.toml", "purifier-4")], intake=intake, clock=clock,
                       timeout=0.2, interval=0.05)
    tcp_bus = ModbusBus(BusConfig("tcp-bus", f"socket://127.0.0.1:{tcp_port}", timeout=0.2),
                        [SlaveConfig(9, load_map(MAPS / "rs485_purifier.toml"),
                                     (LogicalDevice("purifier-9", "modbus-purifier"),), 0.05, 0.2)],
                        intake=intake, clock=clock, metrics=Metrics())
    supervisor = Supervisor(clock=clock, metrics=Metrics(), initial_backoff=0.05, max_backoff=0.2, jitter=lambda: 1.0)
    link = ModbusLink([pty_bus, tcp_bus], supervisor)
    links = DeviceLinks({"modbus": link}, transport_of=lambda device_id: "modbus")
    task = asyncio.create_task(link.run(), name="modbus-link")
    try:
        await wait_for(lambda: links.command_ready("purifier-9") and links.command_ready("purifier-4"))
        sim_line.port.unplug()
        await wait_for(lambda: supervisor.health["modbus:test-bus"].state == "failing")
        count = len(intake.of("purifier-9"))
        await wait_for(lambda: len(intake.of("purifier-9")) > count + 2)  # the other bus polls on
        assert supervisor.health["modbus:tcp-bus"].state == "up"
        assert not links.command_ready("purifier-4") and links.command_ready("purifier-9")
        ack = await links.send(OutgoingCommand("c-1", "purifier-9", SetFanSpeed(5), 0.0))
        assert ack is not None and ack.ok and tcp_sim.slaves[9].registers["holding"][0] == 5
        with pytest.raises(LinkError, match="bus test-bus"):  # not sent: retried at the command's deadline
            await links.send(OutgoingCommand("c-2", "purifier-4", SetFanSpeed(1), 0.0))
    finally:
        supervisor.stop()
        await cancel_until_done([task], 5)
        server.close()
        await server.wait_closed()
