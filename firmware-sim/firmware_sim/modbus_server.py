"""A Modbus RTU bus of simulated slaves, served over a pty (a serial port) or over TCP with RTU framing.

Frames are RTU (unit id, PDU, CRC-16/MODBUS low byte first); a request with a bad CRC is dropped as a
real slave drops it. Function codes 1-6, 15 and 16. `baudrate` > 0 emulates the line: every answer leaves
after the request's and the answer's wire time at that speed (a pty or TCP would carry them at once),
so a poll cycle can be measured against the serial line's physical limit.

The pty: `os.openpty()`, its slave end linked at `path` (what the gateway opens as its serial port).
`unplug()` closes it (the gateway sees its port fail) and `replug()` makes a new one at the same path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tty
from collections.abc import Iterable
from pathlib import Path

from firmware_sim.modbus_slaves import ILLEGAL_FUNCTION, ILLEGAL_VALUE, SimSlave


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc


def frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + struct.pack("<H", crc16(body))


def request_length(buffer: bytes | bytearray) -> int | None:
    """The length of the request frame at the start of `buffer`, None until enough bytes are there."""
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function in (15, 16):
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return 8


class SimBus:
    def __init__(self, slaves: Iterable[SimSlave], *, baudrate: int = 0, clock_start: float | None = None) -> None:
        self.slaves = {s.unit: s for s in slaves}
        self.baudrate = baudrate
        self.bad_crc_requests = 0
        self._loop_start = clock_start

    # --- requests -------------------------------------------------------------------------------------

    def split(self, buffer: bytearray) -> list[bytes]:
        """Complete frames taken off the front of `buffer` (bytes with a bad CRC are skipped one by one)."""
        frames = []
        while (length := request_length(buffer)) is not None and len(buffer) >= length:
            candidate = bytes(buffer[:length])
            if struct.unpack("<H", candidate[-2:])[0] == crc16(candidate[:-2]):
                frames.append(candidate)
                del buffer[:length]
            else:
                self.bad_crc_requests += 1
                del buffer[:1]
        return frames

    async def answer(self, request: bytes) -> bytes | None:
        """The reply frame to one request (None: no reply), after the slave's fault and the line's time."""
        slave = self.slaves.get(request[0])
        if slave is None:
            return None  # another unit's request (or a broadcast): silence
        slave.requests += 1
        fault = slave.fault
        mode = fault.hit()
        if mode == "silent":
            return None
        loop = asyncio.get_running_loop()
        if self._loop_start is None:
            self._loop_start = loop.time()
        slave.tick(loop.time() - self._loop_start)
        pdu = self._exception(request[1], fault.exception_code) if mode == "exception" else \
            handle_pdu(slave, request[1:-2])
        reply = frame(slave.unit, pdu)
        delay = fault.slow_ms / 1000.0 if mode == "slow" else 0.0
        if self.baudrate:
            delay += (len(request) + len(reply)) * 10.0 / self.baudrate
        if delay:
            await asyncio.sleep(delay)
        if mode == "garbled":
            reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
        return reply

    @staticmethod
    def _exception(function: int, code: int) -> bytes:
        return bytes([function | 0x80, code])

    # --- transports -----------------------------------------------------------------------------------

    async def serve_tcp(self, host: str, port: int) -> asyncio.Server:
        """RTU frames over TCP (an RS-485-to-Ethernet converter in transparent mode)."""

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            buffer = bytearray()
            try:
                while data := await reader.read(1024):
                    buffer += data
                    for request in self.split(buffer):
                        reply = await self.answer(request)
                        if reply is not None:
                            writer.write(reply)
            except ConnectionError:
                pass
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        return await asyncio.start_server(client, host, port)


def handle_pdu(slave: SimSlave, pdu: bytes) -> bytes:
    """One request PDU -> its reply PDU (or an exception PDU)."""
    function = pdu[0]
    if function in (1, 2, 3, 4):
        address, count = struct.unpack(">HH", pdu[1:5])
        if function in (3, 4):
            if not 1 <= count <= 125:
                return bytes([function | 0x80, ILLEGAL_VALUE])
            regs = slave.read_registers("holding" if function == 3 else "input", address, count)
            if isinstance(regs, int):
                return bytes([function | 0x80, regs])
            return bytes([function, 2 * count]) + struct.pack(f">{count}H", *regs)
        if not 1 <= count <= 2000:
            return bytes([function | 0x80, ILLEGAL_VALUE])
        bits = slave.read_bits("coil" if function == 1 else "discrete_input", address, count)
        if isinstance(bits, int):
            return bytes([function | 0x80, bits])
        packed = bytearray((count + 7) // 8)
        for i, bit in enumerate(bits):
            if bit:
                packed[i // 8] |= 1 << (i % 8)
        return bytes([function, len(packed)]) + bytes(packed)
    if function == 5:
        address, value = struct.unpack(">HH", pdu[1:5])
        if value not in (0x0000, 0xFF00):
            return bytes([function | 0x80, ILLEGAL_VALUE])
        error = slave.write_coil(address, value == 0xFF00)
        return bytes([function | 0x80, error]) if error else pdu[:5]
    if function == 6:
        address, value = struct.unpack(">HH", pdu[1:5])
        error = slave.write_registers(address, [value])
        return bytes([function | 0x80, error]) if error else pdu[:5]
    if function == 16:
        address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
        values = list(struct.unpack(f">{count}H", pdu[6:6 + nbytes]))
        error = slave.write_registers(address, values)
        return bytes([function | 0x80, error]) if error else pdu[:5]
    if function == 15:
        address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
        data = pdu[6:6 + nbytes]
        for i in range(count):
            error = slave.write_coil(address + i, bool(data[i // 8] >> (i % 8) & 1))
            if error:
                return bytes([function | 0x80, error])
        return pdu[:5]
    return bytes([function | 0x80, ILLEGAL_FUNCTION])


class PtyPort:
    """The simulated bus's end of a pty; the other end is linked at `path` for the gateway to open."""

    def __init__(self, bus: SimBus, path: Path) -> None:
        self.bus = bus
        self.path = path
        self._master: int | None = None
        self._slave: int | None = None
        self._buffer = bytearray()
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.symlink_to(os.ttyname(slave))
        asyncio.get_running_loop().add_reader(master, self._readable)

    def unplug(self) -> None:
        """Close the pty: whoever has the port open sees it fail; the path is gone until replug()."""
        if self._master is None:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        for task in self._tasks:
            task.cancel()
        os.close(self._master)
        assert self._slave is not None
        os.close(self._slave)
        self._master = self._slave = None
        self._buffer.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    replug = open

    def close(self) -> None:
        self.unplug()

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""  # EIO: no process has the port open (the gateway closed it)
        self._buffer += data
        for request in self.bus.split(self._buffer):
            task = asyncio.get_running_loop().create_task(self._reply(request), name="modbus-sim-reply")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reply(self, request: bytes) -> None:
        reply = await self.bus.answer(request)
        if reply is not None and self._master is not None:
            os.write(self._master, reply)
