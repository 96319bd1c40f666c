"""Limits on what a device sends, through the real broker: acknowledged means stored or quarantined."""

from __future__ import annotations

import json
import time

import aiomqtt

from tests.fixtures.gateway import GatewayFactory, device_password


async def test_deep_json_and_absurd_timestamps_are_acknowledged_and_quarantined(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(devices=["AP-01"], api="enabled = false")
    async with aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-01", username="AP-01",
                              password=device_password("AP-01")) as dev:
        # Each publish returns once its PUBACK arrived, i.e. once the gateway committed what it made of it.
        await dev.publish("device/AP-01/data", b"[" * 1000 + b"]" * 1000, qos=1)
        await dev.publish("device/AP-01/data", b'{"a": ' * 1000 + b"1" + b"}" * 1000, qos=1)
        await dev.publish("device/AP-01/data", json.dumps({"timestamp": 1e30, "pm25": 3}).encode(), qos=1)
        await dev.publish("device/AP-01/data", json.dumps({"timestamp": time.time() * 1000, "pm25": 3}).encode(), qos=1)
    reasons = [r for (r,) in gw.query("SELECT reason FROM quarantine ORDER BY id")]
    assert reasons[:2] == ["JSON nested deeper than 32 levels"] * 2
    assert reasons[2].startswith("ts: 1e+27 s is") and "ahead of the gateway's clock" in reasons[2]
    assert len(reasons) == 3
    assert gw.query("SELECT count(*) FROM readings") == [(1,)]
    assert gw.counter("gateway_ingest_errors_total") == 0
