"""A TLS listener admits a connection before it spends a handshake on it, and the handshake keeps the
CONNECT deadline.

Raw sockets against the real embedded broker's TLS listener (a trustme certificate). A ClientHello is made
with the ssl module's memory BIOs; what the server answers it with tells whether a handshake began: a TLS
handshake record (0x16, its ServerHello) or the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, free_port, wait_for
from tests.fixtures.tls import tls_listener

HANDSHAKE_RECORD = 0x16  # TLS record type of a ServerHello


@dataclass
class TlsGateway:
    gw: RunningGateway
    port: int  # the TLS listener's
    client_context: ssl.SSLContext  # trusts the listener's certificate


async def tls_gateway(gateway_factory: GatewayFactory, folder: Path, extra_broker: str = "") -> TlsGateway:
    port = free_port()
    listener, client_context = tls_listener(folder, port)
    gw = await gateway_factory(api="enabled = false", extra_broker=extra_broker, extra_listeners=listener)
    return TlsGateway(gw, port, client_context)


def client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight of a TLS client: its ClientHello."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def connect_raw(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def answer_to(sock: socket.socket, hello: bytes, timeout: float = 5) -> bytes:
    """The first bytes the server sends after `hello`; b"" when it closed the connection instead."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, hello)
        return await asyncio.wait_for(loop.sock_recv(sock, 5), timeout)
    except ConnectionError:  # reset: closed with the hello unread
        return b""


async def closed_after(sock: socket.socket, timeout: float) -> bool:
    """Read (and drop) whatever the server sends until it closes the connection."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            while await loop.sock_recv(sock, 4096):
                pass
    except ConnectionError:
        pass
    return True


def reading() -> bytes:
    return json.dumps({"timestamp": int(time.time() * 1000), "pm25": 5.0, "fanSpeed": 1, "powerOn": True}).encode()


async def test_a_source_over_its_limit_is_closed_without_a_tls_handshake(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    tls = await tls_gateway(gateway_factory, tmp_path, "max_connections_per_source = 3")
    gw, hello = tls.gw, client_hello(tls.client_context)
    admitted = [await connect_raw(tls.port, "127.0.0.2") for _ in range(2)]
    over: list[socket.socket] = []
    try:
        async with aiomqtt.Client("127.0.0.1", tls.port, identifier="AP-01", username="AP-01",
                                  password=device_password("AP-01"), tls_context=tls.client_context,
                                  bind_address="127.0.0.2") as device:  # the third from 127.0.0.2: admitted
            over = [await connect_raw(tls.port, "127.0.0.2") for _ in range(3)]
            for sock in over:
                assert await answer_to(sock, hello) == b""  # closed at accept: no ServerHello
            assert gw.counter("gateway_broker_connections_refused_total", reason="source-limit") == 3
            for sock in admitted:  # the admitted ones do get their handshake
                assert (await answer_to(sock, hello))[0] == HANDSHAKE_RECORD
            await device.publish("device/AP-01/data", reading(), qos=1)
        await wait_for(lambda: gw.query("SELECT count(*) FROM readings")[0][0] == 1)
    finally:
        for sock in [*admitted, *over]:
            sock.close()


async def test_a_tls_handshake_must_end_within_the_connect_deadline(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    tls = await tls_gateway(gateway_factory, tmp_path, "connect_timeout_seconds = 0.5")
    idle = await connect_raw(tls.port, "127.0.0.2")  # sends nothing
    halfway = await connect_raw(tls.port, "127.0.0.3")  # sends its ClientHello, never the rest
    try:
        assert (await answer_to(halfway, client_hello(tls.client_context)))[0] == HANDSHAKE_RECORD
        # Closed at the 0.5 s deadline (asyncio's own handshake timeout is 60 s).
        assert await closed_after(idle, 5) and await closed_after(halfway, 5)
        assert tls.gw.counter("gateway_broker_connections_dropped_total", reason="connect-timeout") == 2
    finally:
        idle.close()
        halfway.close()


async def test_a_failed_handshake_is_dropped_and_counted(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    tls = await tls_gateway(gateway_factory, tmp_path)
    sock = await connect_raw(tls.port, "127.0.0.2")
    try:
        await asyncio.get_running_loop().sock_sendall(sock, b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # MQTT
        assert await closed_after(sock, 5)
    finally:
        sock.close()
    await wait_for(lambda: tls.gw.counter("gateway_broker_connections_dropped_total", reason="tls-failed") == 1)
    await wait_for(lambda: tls.gw.counter("gateway_broker_connections_open") == 0)


async def test_a_connection_closed_before_its_handshake_is_counted_as_such(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    tls = await tls_gateway(gateway_factory, tmp_path)
    for _ in range(20):
        (await connect_raw(tls.port, "127.0.0.2")).close()
    await wait_for(lambda: tls.gw.counter("gateway_broker_connections_dropped_total",
                                          reason="closed-before-connect") == 20)
    assert tls.gw.counter("gateway_broker_connections_dropped_total", reason="tls-failed") == 0
    await wait_for(lambda: tls.gw.counter("gateway_broker_connections_open") == 0)


async def test_connections_waiting_for_their_handshake_make_room_for_a_device(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    tls = await tls_gateway(gateway_factory, tmp_path, "max_pending_connections = 3")
    idle = [await connect_raw(tls.port, f"127.0.0.{2 + i}") for i in range(3)]
    try:
        async with aiomqtt.Client("127.0.0.1", tls.port, identifier="AP-01", username="AP-01",
                                  password=device_password("AP-01"), tls_context=tls.client_context):
            pass
        assert await closed_after(idle[0], 5)  # the oldest idle one made room
        assert tls.gw.counter("gateway_broker_connections_dropped_total", reason="evicted") == 1
    finally:
        for sock in idle:
            sock.close()
