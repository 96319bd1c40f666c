"""The panel's live stream (Server-Sent Events) against a real gateway with simulated purifiers: the snapshot,
device changes as they happen, pings, expiry of the session, the end of the stream at shutdown, and the
registry subscription that exists only while a stream is open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway.core.clock import ManualClock
from gateway.core.models import Reading
from gateway.core.registry import Change
from gateway.web.panel import live
from gateway.web.panel.context import PANEL
from tests.fixtures.gateway import GatewayFactory, RunningGateway, wait_for
from tests.fixtures.panel import PanelClient, base_url, users_config
from tests.fixtures.purifiers import purifier


class EventReader:
    """Reads `event:`/`data:` blocks from an open SSE response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        event, data = "message", ""
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    return "eof", None
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data:
                        return event, json.loads(data)
                    event = "message"
                    continue
                name, _, value = line.partition(": ")
                if name == "event":
                    event = value
                elif name == "data":
                    data = value

    async def until(self, wanted: str, predicate: Any = lambda data: True, timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                event, data = await self.next(timeout)
                if event == wanted and predicate(data):
                    return data
                assert event != "eof", f"the stream ended while waiting for {wanted}"


@contextlib.asynccontextmanager
async def logged_in(gw: RunningGateway, name: str = "vera") -> AsyncIterator[PanelClient]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        c = PanelClient(base_url(gw), http)
        assert (await c.login(name))[0] == 200
        yield c


@contextlib.asynccontextmanager
async def stream(c: PanelClient) -> AsyncIterator[EventReader]:
    async with c.http.get(f"{c.base}/panel/events") as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-store"
        yield EventReader(resp)


async def test_a_stream_starts_with_every_device_then_follows_their_changes(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(extra=users_config())
    async with logged_in(gw) as c, stream(c) as events:
        first = [await events.next(), await events.next()]
        assert [(e, d["id"], d["online"]) for e, d in first] == [("device", "AP-01", False), ("device", "AP-02", False)]
        async with purifier(gw, "AP-01", interval=0.2, pm25=42.0):
            row = await events.until("device", lambda d: d["id"] == "AP-01" and d["online"] and d["pm25"] is not None)
            assert row["name"] == "AP-01" and row["power"] in (True, False) and isinstance(row["fanSpeed"], int)
            assert {"temperature", "humidity", "pm25", "lastSeen", "ts", "desired"} <= set(row)
            later = await events.until("device", lambda d: d["id"] == "AP-01" and d["ts"] > row["ts"])
            assert later["online"]
        await events.until("device", lambda d: d["id"] == "AP-01" and not d["online"])


async def test_pings_keep_the_stream_alive_and_an_expired_session_ends_it(gateway_factory: GatewayFactory) -> None:
    clock = ManualClock()
    gw = await gateway_factory(clock=clock, extra=users_config(
        panel="keepalive_seconds = 0.1\nsession_idle_minutes = 1"))
    async with logged_in(gw) as c, stream(c) as events:
        await events.until("ping")
        await events.until("ping")
        clock.advance(61)  # an open page alone does not keep its session: the next ping says so
        assert await events.until("expired") == {}
        assert (await events.next()) == ("eof", None)
        status, _ = await c.call("GET", "/panel/session")
        assert status == 401


async def test_streams_end_at_shutdown_and_the_registry_subscription_goes_with_the_last(
        gateway_factory: GatewayFactory) -> None:
    # a page that went away is noticed at the stream's next write: at the latest its next ping
    gw = await gateway_factory(extra=users_config(panel="keepalive_seconds = 0.1"))
    assert gw.gateway.api is not None
    feed = gw.gateway.api.app[PANEL].feed
    registry = gw.gateway.registry
    listeners_before = registry.listeners(Change.READING)
    async with logged_in(gw) as c:
        async with stream(c) as one, stream(c) as two:
            await one.next()
            await two.next()
            assert feed.open_streams == 2
            assert registry.listeners(Change.READING) == listeners_before + 1  # one for all streams
        await wait_for(lambda: feed.open_streams == 0)
        assert registry.listeners(Change.READING) == listeners_before
        async with stream(c) as events:
            await events.next()
            await gw.stop()
            event = "device"
            while event == "device":
                event, _ = await events.next()
            assert event == "eof"


async def test_a_slow_reader_gets_the_latest_row_of_each_device_once(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(extra=users_config())
    assert gw.gateway.api is not None
    feed = gw.gateway.api.app[PANEL].feed
    s = feed.open()
    try:
        for i in range(1000):
            gw.gateway.registry.reading(Reading("AP-01", 1_763_800_000.0 + i, {"pm25": float(i)}, 1_763_800_000.0 + i))
        assert s.changed == {"AP-01"} and s.wake.is_set()
        event = feed.event("AP-01")
        assert b'"pm25":999.0' in event and feed.event("AP-01") is event  # built once, shared by all streams
    finally:
        feed.close(s)


async def test_a_page_that_stops_reading_loses_its_stream(gateway_factory: GatewayFactory,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "SEND_TIMEOUT_S", 0.5)
    gw = await gateway_factory(extra=users_config())
    assert gw.gateway.api is not None
    feed = gw.gateway.api.app[PANEL].feed
    async with logged_in(gw) as c:
        cookie = c.cookie("eg_session")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a page that reads nothing fills up fast
    sock.connect(("127.0.0.1", gw.gateway.api.port))
    sock.setblocking(False)
    _, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(f"GET /panel/events HTTP/1.1\r\nHost: x\r\nCookie: eg_session={cookie}\r\n\r\n".encode())
        await wait_for(lambda: feed.open_streams == 1)
        many: dict[str, float | int | bool] = {f"metric{i}": 1.5 for i in range(6000)}  # ~100 KB per event
        for i in range(200):  # 20 MB of events, more than the socket buffers hold
            gw.gateway.registry.reading(Reading("AP-01", 1_763_800_000.0 + i, many, 1_763_800_000.0 + i))
            await asyncio.sleep(0)
            if feed.open_streams == 0:
                break
        await wait_for(lambda: feed.open_streams == 0)
    finally:
        writer.close()
