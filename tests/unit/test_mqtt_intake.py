"""The LAN broker's intake: every message a device sends is stored or quarantined, never silently dropped.

Property (issue: "PUBACKed = stored + quarantined"): for any payload on a device's own data topic, the intake
hands exactly one record to the store (a Reading or a Quarantined row) and answers with a receipt that is
not a refusal, whatever the payload or the driver does.
"""

from __future__ import annotations

import asyncio
import json
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.purifier import PurifierDriver
from gateway.core.clock import ManualClock
from gateway.core.metrics import Metrics
from gateway.core.models import Quarantined, Reading, StoreRecord
from gateway.core.registry import DeviceRegistry
from gateway.ingest.mqtt_intake import MqttIntake
from gateway.ingest.service import Ingest

NOW = 1_763_800_000.0


class Store:
    def __init__(self) -> None:
        self.records: list[StoreRecord] = []

    async def put(self, record: StoreRecord) -> None:
        self.records.append(record)

    def receipt(self) -> asyncio.Future[None] | None:
        return None


class BrokenDriver(PurifierDriver):
    kind: ClassVar[str] = "broken"

    def decode_reading(self, device_id: str, payload: bytes, received_at: float) -> Reading:
        raise RuntimeError("a bug in a driver")


def intake(store: Store, driver: PurifierDriver | None = None) -> MqttIntake:
    clock = ManualClock(NOW)
    registry = DeviceRegistry({"AP-01": "purifier"})
    ingest = Ingest(put=store.put, receipt=store.receipt, metrics=Metrics(), clock=clock, registry=registry)
    chosen = driver or PurifierDriver()
    return MqttIntake(intake=ingest, driver_of=lambda d: chosen if registry.kind(d) else None,
                      metrics=Metrics(), clock=clock)


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
payloads = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.dictionaries(st.sampled_from(["timestamp", "ts", "fanSpeed", "pm25", "powerOn", "metrics", "x"]),
                      json_values, max_size=6).map(lambda v: json.dumps(v).encode())
    | st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n)
)


@pytest.mark.slow
@pytest.mark.timeout(120)  # 300 examples: ~5 s on a quiet 2-core machine, 16 s on a busy one
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads)
async def test_every_data_message_is_stored_or_quarantined_exactly_once(payload: bytes) -> None:
    store = Store()
    receipt = await intake(store).message("AP-01", "device/AP-01/data", payload)
    assert receipt is None  # acknowledged: so it must be kept
    kept = [r for r in store.records if isinstance(r, Reading | Quarantined)]
    assert len(kept) == 1


async def test_deep_json_is_quarantined_with_a_depth_reason_before_parsing() -> None:
    store = Store()
    await intake(store).message("AP-01", "device/AP-01/data", b"[" * 5000 + b"]" * 5000)
    (bad,) = store.records
    assert isinstance(bad, Quarantined) and bad.reason == "JSON nested deeper than 32 levels"


async def test_a_bug_while_handling_a_message_quarantines_it_with_the_error() -> None:
    store = Store()
    await intake(store, BrokenDriver()).message("AP-01", "device/AP-01/data", b'{"pm25": 1}')
    (bad,) = store.records
    assert isinstance(bad, Quarantined)
    assert bad.reason == "internal error while handling it: RuntimeError: a bug in a driver"
    assert bad.payload == b'{"pm25": 1}' and bad.device_id == "AP-01"


@pytest.mark.parametrize(("ts", "reason"), [
    (1e30, "ts: 1e+27 s is 1.667e+25 minutes ahead"),  # milliseconds, a year no datetime can name
    (946684799, "ts: 1999-12-31T23:59:59Z is before 2000-01-01T00:00:00Z"),
    (NOW + 601, "ts: 2025-11-22T08:36:41Z is 10.02 minutes ahead of the gateway's clock (at most 10)"),
])
async def test_timestamps_outside_the_window_are_quarantined(ts: float, reason: str) -> None:
    store = Store()
    await intake(store).message("AP-01", "device/AP-01/data", json.dumps({"ts": ts, "pm25": 1.0}).encode())
    (bad,) = store.records
    assert isinstance(bad, Quarantined) and bad.reason.startswith(reason)


async def test_a_reading_inside_the_window_is_stored() -> None:
    store = Store()
    await intake(store).message("AP-01", "device/AP-01/data", json.dumps({"ts": NOW + 600, "pm25": 1.0}).encode())
    (good,) = store.records
    assert isinstance(good, Reading) and good.ts == NOW + 600
