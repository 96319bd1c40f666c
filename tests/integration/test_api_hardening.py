"""The REST API refuses malformed bodies with 400 (never 500) and cross-site requests a browser could send."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fixtures.gateway import GatewayFactory, RunningGateway

SCHEDULE = b'{"deviceId": "AP-01", "days": ["Mon"], "start": "08:00", "end": "09:00", "fanSpeed": 3}'


@pytest.fixture
async def gw(gateway_factory: GatewayFactory) -> RunningGateway:
    return await gateway_factory()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as client:
        yield client


def base(gw: RunningGateway) -> str:
    assert gw.gateway.api is not None
    return f"http://127.0.0.1:{gw.gateway.api.port}"


async def post(session: aiohttp.ClientSession, url: str, body: bytes, **headers: str) -> tuple[int, str]:
    async with session.post(url, data=body, headers={"Content-Type": "application/json", **headers}) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's parser goes
    b'{"deviceId": "AP-01", "value": ' + b"9" * 5000 + b"}",  # more digits than int() takes
])
async def test_a_malformed_body_is_a_400_not_a_500(gw: RunningGateway, session: aiohttp.ClientSession,
                                                   body: bytes) -> None:
    status, text = await post(session, base(gw) + "/api/schedule", body)
    assert status == 400 and "invalid JSON" in text


async def test_a_body_that_is_not_json_is_refused_and_changes_nothing(gw: RunningGateway,
                                                                      session: aiohttp.ClientSession) -> None:
    async with session.post(base(gw) + "/api/schedule", data=SCHEDULE, headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 415
    assert gw.gateway.controller.schedules_for("AP-01") == []


async def test_a_cross_origin_request_is_refused_and_a_same_origin_one_is_not(
    gw: RunningGateway, session: aiohttp.ClientSession,
) -> None:
    status, text = await post(session, base(gw) + "/api/schedule", SCHEDULE, Origin="http://evil.example")
    assert status == 403 and "cross-origin" in text
    assert gw.gateway.controller.schedules_for("AP-01") == []
    status, _ = await post(session, base(gw) + "/api/schedule", SCHEDULE, Origin=base(gw))
    assert status == 201
