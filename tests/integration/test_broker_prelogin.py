"""Sockets that never log in cost nothing for long: closed at once, or at the CONNECT deadline.

Raw sockets against the real embedded broker, counting the gateway's open files (this process's
/proc/self/fd: the gateway runs in the test's process).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiomqtt

from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, wait_for


def open_files() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


async def connect_raw(gw: RunningGateway) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    return sock


async def test_connections_closed_before_their_connect_are_closed_at_once(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="enabled = false")
    baseline = open_files()
    for _ in range(200):
        (await connect_raw(gw)).close()
    await wait_for(lambda: gw.counter("gateway_broker_connections_dropped_total",
                                      reason="closed-before-connect") == 200, timeout=20)
    await wait_for(lambda: open_files() <= baseline + 2, timeout=5)  # not when the garbage collector runs


async def test_a_socket_that_sends_no_connect_is_closed_at_the_deadline(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="enabled = false", extra_broker="connect_timeout_seconds = 0.5")
    idle = [await connect_raw(gw) for _ in range(50)]
    half = await connect_raw(gw)
    half.send(b"\x10\x20\x00\x04MQ")  # the start of a CONNECT, never finished
    loop = asyncio.get_running_loop()
    try:
        for sock in [*idle, half]:
            assert await asyncio.wait_for(loop.sock_recv(sock, 1), 10) == b""  # the gateway closed it
        assert gw.counter("gateway_broker_connections_dropped_total", reason="connect-timeout") == 51
        # A device still logs in meanwhile.
        async with aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-01", username="AP-01",
                                  password=device_password("AP-01")) as dev:
            await dev.publish("device/AP-01/status", b"online", qos=1)
    finally:
        for sock in [*idle, half]:
            sock.close()


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def test_an_oversized_publish_closes_the_connection_before_its_body_is_read(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(api="enabled = false")
    loop = asyncio.get_running_loop()
    sock = await connect_raw(gw)
    user, password = b"AP-01", device_password("AP-01").encode()
    body = (b"\x00\x04MQTT\x04\xc2\x00\x3c" + len(user).to_bytes(2, "big") + user
            + len(user).to_bytes(2, "big") + user + len(password).to_bytes(2, "big") + password)
    await loop.sock_sendall(sock, b"\x10" + remaining_length(len(body)) + body)
    assert await asyncio.wait_for(loop.sock_recv(sock, 4), 10) == b"\x20\x02\x00\x00"  # CONNACK: accepted
    topic = b"device/AP-01/data"
    # A PUBLISH that announces 64 MB; only its first kilobyte is ever sent.
    header = b"\x30" + remaining_length(64 * 1024 * 1024) + len(topic).to_bytes(2, "big") + topic
    try:
        await loop.sock_sendall(sock, header + b"x" * 1024)
        assert await asyncio.wait_for(loop.sock_recv(sock, 1), 10) == b""  # closed without waiting for the rest
        await wait_for(lambda: gw.counter("gateway_broker_protocol_errors_total") == 1)
        assert gw.query("SELECT count(*) FROM quarantine") == [(0,)]
    finally:
        sock.close()
