"""A lean MQTT 3.1.1 load client for benchmarks: pre-encoded packets over asyncio streams.

paho/aiomqtt cost tens of microseconds per message in the load generator itself, which on a 2-core
machine would be measured as the broker's slowness. This client only frames bytes and counts acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def _str(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def connect_packet(
    client_id: str, username: str | None, password: str | None, keepalive: int = 60, *, clean: bool = True
) -> bytes:
    flags = 0x02 if clean else 0x00  # clean session, or resume the stored one
    payload = _str(client_id)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    body = _str("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + payload
    return b"\x10" + remaining_length(len(body)) + body


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int = 0) -> bytes:
    body = _str(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + remaining_length(len(body)) + body


def subscribe_packet(topic: str, qos: int, packet_id: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + _str(topic) + bytes([qos])
    return b"\x82" + remaining_length(len(body)) + body


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(1)
    mult, length = 1, 0
    while True:
        b = (await reader.readexactly(1))[0]
        length += (b & 0x7F) * mult
        if not b & 0x80:
            break
        mult *= 128
    return header[0], await reader.readexactly(length)


def split_packets(data: bytes) -> tuple[list[int], bytes]:
    """The first bytes of the complete packets in `data`, and the start of an incomplete one."""
    kinds: list[int] = []
    pos, end = 0, len(data)
    while pos < end:
        length, shift, head = 0, 0, pos + 1
        while head < end:
            byte = data[head]
            head += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            break  # its remaining length is cut
        if head + length > end:
            break
        kinds.append(data[pos])
        pos = head + length
    return kinds, data[pos:]


@dataclass
class Device:
    """One device connection: publishes readings, counts PUBACKs."""

    device_id: str
    password: str | None
    qos: int
    window: int = 20  # QoS 1 messages in flight, like paho's default
    sent: int = 0
    acked: int = 0
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _next_id: int = 1
    _inflight: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(20))
    _ack_task: asyncio.Task[None] | None = None

    async def connect(self, host: str, port: int) -> None:
        self._inflight = asyncio.Semaphore(self.window)
        self._reader, self._writer = await asyncio.open_connection(host, port)
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writer.write(connect_packet(self.device_id, self.device_id, self.password))
        kind, body = await asyncio.wait_for(read_packet(self._reader), 10)
        if kind != 0x20 or body[1] != 0:
            raise ConnectionError(f"{self.device_id}: CONNACK refused ({body!r})")
        if self.qos:
            self._ack_task = asyncio.create_task(self._read_acks())

    async def _read_acks(self) -> None:
        """Counts PUBACKs from whatever the socket has: one read for many, not three per packet (at 10,000
        messages/s the load generator's own CPU would be measured as the broker's slowness)."""
        assert self._reader is not None
        rest = b""
        try:
            while data := await self._reader.read(65536):
                kinds, rest = split_packets(rest + data)
                acks = kinds.count(0x40)
                self.acked += acks
                for _ in range(acks):
                    self._inflight.release()
        except ConnectionError:
            return

    async def publish(self, topic: str, payload: bytes | Callable[[], bytes]) -> None:
        """`payload` may be made when the message leaves (a callable): after the wait for room in the window."""
        assert self._writer is not None
        if self.qos:
            await self._inflight.acquire()
            pid = self._next_id
            self._next_id = pid % 65535 + 1
            data = payload() if callable(payload) else payload
            self._writer.write(publish_packet(topic, data, 1, pid))
        else:
            self._writer.write(publish_packet(topic, payload() if callable(payload) else payload, 0))
        self.sent += 1
        if self._writer.transport.get_write_buffer_size() > 64 * 1024:
            await self._writer.drain()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait for the PUBACKs of everything in flight (a QoS 1 device does before it disconnects)."""
        if not self.qos:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for _ in range(self.window):  # every slot back: nothing in flight
                    await self._inflight.acquire()
        self._inflight = asyncio.Semaphore(self.window)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.write(b"\xe0\x00")  # DISCONNECT
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        if self._ack_task is not None:
            self._ack_task.cancel()


def reading_payload(seq: int) -> bytes:
    """A purifier reading carrying its send time, so the receiver can measure latency."""
    return json.dumps(
        {"timestamp": int(time.time() * 1000), "pm25": 7.9, "pm10": 11.2, "temperature": 22.4,
         "humidity": 41.0, "fanSpeed": 2, "powerOn": True, "sent": time.time(), "seq": seq},
        separators=(",", ":"),
    ).encode()


async def run_load(
    devices: list[Device],
    *,
    seconds: float,
    rate: float | None,
    payload: Callable[[int], bytes] = reading_payload,
) -> float:
    """Publish for `seconds`: at `rate` messages/s in total, or flat out when rate is None. Returns elapsed."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds
    if rate is None:
        async def flat_out(dev: Device) -> None:
            topic = f"device/{dev.device_id}/data"
            seq = 0
            while loop.time() < end:
                seq += 1
                await dev.publish(topic, payload(seq))
                if seq % 16 == 0:
                    await asyncio.sleep(0)  # let the other devices' tasks run
        await asyncio.gather(*(flat_out(d) for d in devices))
    else:
        tick = 0.01
        sent = 0
        seq = 0
        while True:
            now = loop.time()
            if now >= end:
                break
            due = int((now - start) * rate) - sent
            for _ in range(due):
                dev = devices[sent % len(devices)]
                seq += 1
                await dev.publish(f"device/{dev.device_id}/data", payload(seq))
                sent += 1
            await asyncio.sleep(tick)
    return loop.time() - start


async def subscriber(
    host: str, port: int, topic: str, counter: list[float], stop: asyncio.Event
) -> None:
    """Counts messages a bare broker forwards (QoS of the subscription: 0): [count, time of the last]."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(connect_packet("bench-subscriber", "bench-subscriber", "x"))
    await read_packet(reader)
    writer.write(subscribe_packet(topic, 0))
    try:
        while not stop.is_set():
            kind, _ = await read_packet(reader)
            if kind & 0xF0 == 0x30:
                counter[0] += 1
                counter[1] = time.time()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
