"""The owner of one serial bus (DESIGN principle 5): its port, its lock, the inter-frame gap, its poll loop.

One pymodbus `AsyncModbusSerialClient` with the RTU framer per port. Every request (a poll's read, a
command's write and read-back) takes the bus lock, waits out the inter-frame gap after the previous
frame, and waits at most its slave's own timeout for the answer; pymodbus retries nothing (retries=0)
and never reconnects on its own (reconnect_delay=0): this class decides.

* Polling: the slaves that are due are polled in turn, each with its merged reads (planner.py). A slave
  that does not answer loses the rest of its reads this cycle, so it costs the cycle one timeout, and
  backs off (slaves.py). After `offline_after` failed polls in a row its devices go offline; its first
  answer brings them back online (and ready for commands). Exception responses are answers: logged once
  per code until a clean poll, and counted per device.
* Writes: `send()` writes a command's point, reads it back, and the value read back is the `Ack`;
  `retries` more attempts when there is no answer or the read-back differs.
* Failure: a port that cannot be opened or is lost (an unplugged adapter, a closed pty) makes `run()`
  raise; its devices go offline, and the supervisor reopens it with back-off (logging once).

Time: which slave is due, and its back-off, are decided on the injected clock's monotonic seconds; the
inter-frame gap and the answer timeouts are the line's own time (the event loop's).
pymodbus 3.16 keeps its answer timer in `client.ctx.comm_params.timeout_connect`; the bus sets it per
request (checked when a bus is built: IncompatibleLibraryError, and the daemon does not start).

`port` is a device path or any pyserial URL: `socket://host:port` reaches an RS-485-to-Ethernet
converter (or the simulator) with RTU framing over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pymodbus
import structlog
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.transaction import TransactionManager
from pymodbus.transport import CommParams

from drivers.modbus.driver import command_write
from drivers.modbus.planner import ReadRequest
from drivers.modbus.register_maps import Point
from drivers.modbus.slaves import PolledSlave, SlaveConfig
from drivers.modbus.timing import inter_frame_gap
from gateway.core.clock import Clock
from gateway.core.device_commands import Ack, OutgoingCommand
from gateway.core.errors import IncompatibleLibraryError, PayloadError
from gateway.core.links import DeviceIntake, LinkError
from gateway.core.metrics import Metrics
from gateway.core.models import MetricValue, Reading
from gateway.core.supervisor import Health

log = structlog.get_logger(__name__)

# pymodbus logs every timeout at ERROR; the bus logs a slave's failure once and its recovery once.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

MAX_IDLE_S = 5.0  # the poll loop looks at its schedule at least this often
_READ = {"holding": "read_holding_registers", "input": "read_input_registers", "coil": "read_coils",
         "discrete_input": "read_discrete_inputs"}


@dataclass(frozen=True, slots=True)
class BusConfig:
    name: str
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    timeout: float = 0.5
    retries: int = 2  # more attempts of a command's write + read-back
    gap: float | None = None  # seconds; None: inter_frame_gap() of the line settings
    offline_after: int = 3  # failed polls in a row before the slave's devices go offline
    backoff_max: float = 60.0


def check_pymodbus() -> None:
    """The pymodbus internal the bus sets is there (the version range is pinned in pyproject.toml)."""
    fields = getattr(CommParams, "__dataclass_fields__", {})
    if "timeout_connect" not in fields or not hasattr(TransactionManager, "execute"):
        raise IncompatibleLibraryError("pymodbus", pymodbus.__version__,
                                       ["CommParams.timeout_connect (the answer timer the bus sets per slave)"])


class BusDown(Exception):
    """The port is not open (or was lost)."""


class ModbusBus:
    def __init__(self, config: BusConfig, slaves: Sequence[SlaveConfig], *, intake: DeviceIntake, clock: Clock,
                 metrics: Metrics) -> None:
        check_pymodbus()
        self.config = config
        self.slaves = [PolledSlave(s) for s in slaves]
        self._by_device = {d: s for s in self.slaves for d in s.targets}
        self._intake = intake
        self._clock = clock
        self._metrics = metrics
        self._gap = config.gap if config.gap is not None else inter_frame_gap(
            config.baudrate, config.bytesize, config.parity, config.stopbits)
        self._lock = asyncio.Lock()
        self._client: AsyncModbusSerialClient | None = None
        self._next_send_at = 0.0  # loop time before which the line must stay silent
        self._wake = asyncio.Event()

    @property
    def name(self) -> str:
        return self.config.name

    def device_ids(self) -> list[str]:
        return list(self._by_device)

    # --- the port ------------------------------------------------------------------------------------

    def _new_client(self) -> AsyncModbusSerialClient:
        c = self.config
        return AsyncModbusSerialClient(
            c.port, framer=FramerType.RTU, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity,
            stopbits=c.stopbits, timeout=c.timeout, retries=0, reconnect_delay=0, name=f"modbus {c.name}",
        )

    async def open(self) -> None:
        """Open the port (BusDown when it cannot be opened)."""
        client = self._new_client()
        if not await client.connect():
            client.close()
            raise BusDown(f"cannot open {self.config.port}")
        self._client = client
        log.info("modbus.bus_open", bus=self.name, port=self.config.port, baudrate=self.config.baudrate,
                 slaves=len(self.slaves))

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def run(self, health: Health) -> None:
        """Open the port and poll until cancelled; raise when the port cannot be opened or is lost."""
        try:
            await self.open()
            health.up()
            for slave in self.slaves:
                slave.due = self._clock.monotonic()
            while True:
                await self.poll_due()
                await self._idle()
        except (BusDown, ConnectionException) as exc:
            await self._all_offline("bus-down")
            raise BusDown(f"{self.config.port}: {exc}") from exc
        finally:
            self.close()

    async def _idle(self) -> None:
        delay = min(s.due for s in self.slaves) - self._clock.monotonic() if self.slaves else MAX_IDLE_S
        if delay <= 0:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), min(delay, MAX_IDLE_S))

    def wake(self) -> None:
        """Look at the schedule now (a test moved the clock)."""
        self._wake.set()

    async def _exchange(self, timeout: float, call: Callable[[AsyncModbusSerialClient], Awaitable[Any]]) -> Any:
        """One request and its answer, alone on the line: the lock, the inter-frame gap, the slave's timeout."""
        client = self._client
        if client is None or not client.connected:
            raise BusDown("port not open")
        loop = asyncio.get_running_loop()
        async with self._lock:
            wait = self._next_send_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            client.ctx.comm_params.timeout_connect = timeout  # pymodbus's one answer timer, set per slave
            try:
                return await call(client)
            finally:
                self._next_send_at = loop.time() + self._gap

    async def _read(self, slave: PolledSlave, request: ReadRequest) -> Any:
        slave.stats.requests += 1
        method = _READ[request.table]
        return await self._exchange(slave.timeout, lambda c: getattr(c, method)(
            request.address, count=request.count, device_id=slave.slave))

    # --- polling -------------------------------------------------------------------------------------

    async def poll_due(self) -> int:
        """Poll every slave that is due now; returns how many were polled."""
        now = self._clock.monotonic()
        due = sorted((s for s in self.slaves if s.due <= now), key=lambda s: s.due)
        for slave in due:
            await self.poll(slave)
        return len(due)

    async def poll(self, slave: PolledSlave) -> bool:
        """One poll of one slave: its reads, then its devices' readings. False when it did not answer."""
        values = slave.empty_values()
        exceptions: list[int] = []
        try:
            for request in slave.plan:
                response = await self._read(slave, request)
                if response.isError():
                    exceptions.append(response.exception_code)
                    continue
                slave.decode(request, response.bits if request.table in ("coil", "discrete_input")
                             else response.registers, values)
        except ModbusIOException as exc:
            await self._no_answer(slave, str(exc))
            return False
        self._count_exceptions(slave, exceptions)
        if slave.answered(self._clock.monotonic()):
            log.info("modbus.slave_recovered", bus=self.name, slave=slave.slave, devices=slave.name)
        now = self._clock.now()
        for device, metrics in zip(slave.devices, values, strict=True):
            self._intake.seen(device.device_id, now)
            if metrics:
                try:
                    await self._intake.accept(Reading(device.device_id, now, metrics, now))
                except PayloadError as exc:
                    log.warning("modbus.reading_refused", device_id=device.device_id, reason=str(exc))
        if not slave.online:
            slave.online = True
            for device in slave.devices:
                await self._intake.presence(device.device_id, True, "answered")
                self._intake.command_ready(device.device_id)
        return True

    async def _no_answer(self, slave: PolledSlave, error: str) -> None:
        slave.stats.timeouts += 1
        self._metrics.inc("gateway_modbus_timeouts_total", 1, "Modbus requests without a (valid) answer",
                          bus=self.name, slave=str(slave.slave))
        delay = slave.failed(self._clock.monotonic(), self.config.backoff_max)
        if slave.failures == 1:
            log.warning("modbus.slave_unreachable", bus=self.name, slave=slave.slave, devices=slave.name,
                        error=error, retry_in=round(delay, 3))
        if slave.failures >= self.config.offline_after and slave.online:
            slave.online = False
            for device in slave.devices:
                await self._intake.presence(device.device_id, False, "no-answer")

    def _count_exceptions(self, slave: PolledSlave, codes: list[int]) -> None:
        if not codes:
            slave.exception_codes.clear()
            return
        for code in codes:
            slave.stats.exceptions[code] = slave.stats.exceptions.get(code, 0) + 1
            self._metrics.inc("gateway_modbus_exceptions_total", 1, "Modbus exception responses",
                              bus=self.name, slave=str(slave.slave), code=str(code))
            if code not in slave.exception_codes:
                slave.exception_codes.add(code)
                log.warning("modbus.exception_response", bus=self.name, slave=slave.slave, devices=slave.name,
                            code=code)

    async def _all_offline(self, reason: str) -> None:
        for slave in self.slaves:
            if slave.online:
                slave.online = False
                for device in slave.devices:
                    await self._intake.presence(device.device_id, False, reason)

    # --- commands ------------------------------------------------------------------------------------

    def command_ready(self, device_id: str) -> bool:
        slave = self._by_device.get(device_id)
        return slave is not None and slave.online and self._client is not None

    async def send(self, command: OutgoingCommand) -> Ack:
        """Write the command's point, read it back: the value read back is the acknowledgement."""
        slave = self._by_device.get(command.device_id)
        if slave is None:
            raise LinkError(f"device {command.device_id!r} is not on bus {self.name}")
        metric, value = command_write(command.command)
        point = slave.targets[command.device_id][1].get(metric)
        refused = _refusal(point, metric, value)
        if refused is not None or point is None:
            return Ack(command.command_id, False, refused, None)
        registers = point.codec.encode(value)
        problem = "no answer"
        answered = False
        for _ in range(self.config.retries + 1):
            try:
                written = await self._write(slave, point, registers)
                answered = True
                if written.isError():
                    return Ack(command.command_id, False, f"device refused the write: exception "
                               f"{written.exception_code}", None)
                back = await self._read(slave, ReadRequest(point.input_type, point.address, point.span, ((0, 0),)))
            except ModbusIOException:
                problem = "no answer"
                continue
            except (BusDown, ConnectionException) as exc:
                raise LinkError(f"bus {self.name}: {exc}") from exc
            if back.isError():
                problem = f"read-back refused: exception {back.exception_code}"
                continue
            got = point.codec.decode(back.bits if point.input_type == "coil" else back.registers, 0)
            if got == value:
                return Ack(command.command_id, True, None, {metric: got})
            problem = f"read back {got!r} after writing {value!r}"
        if not answered:
            raise LinkError(f"device {command.device_id!r} (slave {slave.slave}): {problem}")
        return Ack(command.command_id, False, f"write not confirmed: {problem}", None)

    async def _write(self, slave: PolledSlave, point: Point, registers: list[int]) -> Any:
        slave.stats.writes += 1
        unit = slave.slave
        if point.input_type == "coil":
            return await self._exchange(slave.timeout, lambda c: c.write_coil(point.address, bool(registers[0]),
                                                                              device_id=unit))
        if len(registers) == 1:
            return await self._exchange(slave.timeout, lambda c: c.write_register(point.address, registers[0],
                                                                                  device_id=unit))
        return await self._exchange(slave.timeout, lambda c: c.write_registers(point.address, registers,
                                                                               device_id=unit))


def _refusal(point: Point | None, metric: str, value: MetricValue) -> str | None:
    """Why a write of `value` to `point` is refused before it reaches the bus (None: it may go)."""
    if point is None or not point.writable:
        return f"the device's register map has no writable point {metric!r}"
    if not isinstance(value, bool):
        if point.min_value is not None and value < point.min_value:
            return f"{metric} {value!r} is below the point's min_value {point.min_value:g}"
        if point.max_value is not None and value > point.max_value:
            return f"{metric} {value!r} is above the point's max_value {point.max_value:g}"
    try:
        point.codec.encode(value)
    except ValueError as exc:
        return f"{metric}: {exc}"
    return None
