"""Sockets that never log in cost nothing for long: closed at once, or at the CONNECT deadline.

Raw sockets against the real embedded broker, counting the gateway's open files (this process's
/proc/self/fd: the gateway runs in the test's process).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from pathlib import Path

import aiomqtt
import pytest
import structlog

from tests.bench.mqttload import remaining_length
from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, wait_for


def open_files() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


async def connect_raw(gw: RunningGateway, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the broker from `source` (any 127.x.y.z: loopback answers them all)."""
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    return sock


async def closed_by_gateway(sock: socket.socket, timeout: float = 10) -> bool:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 1), timeout) == b""


async def device_logs_in(gw: RunningGateway, device: str = "AP-01") -> None:
    async with aiomqtt.Client("127.0.0.1", gw.port, identifier=device, username=device,
                              password=device_password(device)) as dev:
        await dev.publish(f"device/{device}/status", b"online", qos=1)


async def test_connections_closed_before_their_connect_are_closed_at_once(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="enabled = false")
    baseline = open_files()
    for _ in range(200):
        (await connect_raw(gw)).close()
    await wait_for(lambda: gw.counter("gateway_broker_connections_dropped_total",
                                      reason="closed-before-connect") == 200, timeout=20)
    # Not when the garbage collector runs. (A few descriptors of the gateway's own may open meanwhile: the WAL
    # checkpointer's -shm file, a reader's connection; 200 sockets left open would be far past this.)
    await wait_for(lambda: open_files() <= baseline + 6, timeout=5)


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
        await device_logs_in(gw)  # a device still logs in meanwhile
    finally:
        for sock in [*idle, half]:
            sock.close()


async def test_a_source_over_its_limit_is_closed_at_accept_and_logged_once(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="enabled = false", extra_broker="max_connections_per_source = 5")
    with structlog.testing.capture_logs() as logs:
        socks = [await connect_raw(gw, "127.0.0.2") for _ in range(40)]
        try:
            # The 35 over the limit are closed at once, long before the 10 s CONNECT deadline.
            await asyncio.gather(*(closed_by_gateway(sock, 5) for sock in socks[5:]))
            assert gw.counter("gateway_broker_connections_refused_total", reason="source-limit") == 35
            await device_logs_in(gw)  # another address (127.0.0.1) is not affected
            for sock in socks[:5]:  # the first five are still open, waiting for their CONNECT
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
        finally:
            for sock in socks:
                sock.close()
    refused = [entry for entry in logs if entry["event"] == "broker.connection_refused"]
    assert len(refused) == 1 and refused[0]["reason"] == "source-limit"


async def test_idle_connections_make_room_for_a_device_when_the_pending_limit_is_reached(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(api="enabled = false", extra_broker="max_pending_connections = 10")
    # Ten addresses, three idle sockets each: the oldest idle ones are closed to make room for newer ones.
    socks = [await connect_raw(gw, f"127.0.0.{2 + i % 10}") for i in range(30)]
    try:
        await asyncio.gather(*(closed_by_gateway(sock, 5) for sock in socks[:20]))
        assert gw.counter("gateway_broker_connections_dropped_total", reason="evicted") == 20
        await device_logs_in(gw)  # the pending limit is full of idle sockets: the device still gets in
        assert gw.counter("gateway_broker_connections_dropped_total", reason="evicted") == 21
    finally:
        for sock in socks:
            sock.close()


async def test_a_full_broker_refuses_new_connections_at_accept(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="enabled = false", extra_broker="max_connections = 2")
    async with aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-01", username="AP-01",
                              password=device_password("AP-01")), \
            aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-02", username="AP-02",
                           password=device_password("AP-02")):
        sock = await connect_raw(gw)
        try:
            assert await closed_by_gateway(sock, 5)
        finally:
            sock.close()
        assert gw.counter("gateway_broker_connections_refused_total", reason="total-limit") == 1
    await wait_for(lambda: gw.counter("gateway_broker_connections_open") == 0)
    await device_logs_in(gw)  # room again once they left


async def test_an_oversized_connect_is_dropped_before_its_body_is_read(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="enabled = false")
    loop = asyncio.get_running_loop()
    oversized, not_connect = await connect_raw(gw), await connect_raw(gw)
    try:
        await loop.sock_sendall(oversized, b"\x10" + remaining_length(64 * 1024 * 1024) + b"\x00\x04MQTT" + b"x" * 1024)
        await loop.sock_sendall(not_connect, b"\x30\x05\x00\x01ax")  # a PUBLISH before any CONNECT
        assert await closed_by_gateway(oversized, 5)  # at once, not at the 10 s CONNECT deadline
        assert await closed_by_gateway(not_connect, 5)
    finally:
        oversized.close()
        not_connect.close()
    assert gw.counter("gateway_broker_connections_dropped_total", reason="oversized-connect") == 1
    assert gw.counter("gateway_broker_connections_dropped_total", reason="not-connect") == 1
    await device_logs_in(gw)


async def test_a_connect_is_parsed_within_its_own_length(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="enabled = false")
    loop = asyncio.get_running_loop()
    sock = await connect_raw(gw)
    # Remaining length 18, but the user name is announced as 200 bytes: parsed from the stream, it would take
    # the bytes that follow the packet (and be refused as an unknown device).
    body = b"\x00\x04MQTT\x04\x82\x00\x3c" + b"\x00\x02id" + b"\x00\xc8ab"
    try:
        await loop.sock_sendall(sock, b"\x10" + remaining_length(len(body)) + body + b"y" * 300)
        assert await asyncio.wait_for(loop.sock_recv(sock, 4), 5) == b"\x20\x02\x00\x04"  # bad user name
        assert await closed_by_gateway(sock, 5)
    finally:
        sock.close()
    assert gw.counter("gateway_broker_connections_dropped_total", reason="refused-connect") == 1
    assert gw.gateway.metrics.total("gateway_broker_logins_refused_total") == 0


async def test_failed_accepts_are_counted_and_logged_once_without_a_traceback(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(api="enabled = false")
    loop = asyncio.get_running_loop()
    error = OSError(errno.EMFILE, "Too many open files")
    with structlog.testing.capture_logs() as logs:
        for _ in range(500):  # what asyncio's listener reports for each accept() that fails
            loop.call_exception_handler({"message": "socket.accept() out of system resource", "exception": error})
    assert gw.counter("gateway_broker_accept_errors_total") == 500
    lines = [entry for entry in logs if entry["event"] == "broker.accept_failed"]
    assert len(lines) == 1 and "exc_info" not in lines[0]


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
