"""The uplink's lanes end when cancelled, even when aiomqtt swallowed the cancellation.

Python 3.11's asyncio.wait_for (which aiomqtt uses to wait for a PUBACK) swallows a cancellation that lands
as the acknowledgement arrives. The status lane then went back to waiting for its next event, and the
gateway's stop waited on it for good (a test's teardown timed out after 10 s, in about one full run in two).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.core.clock import ManualClock
from gateway.core.metrics import Metrics
from gateway.core.registry import DeviceRegistry
from gateway.settings import UplinkSection
from gateway.uplink.client import Uplink
from gateway.uplink.rpc import Dispatcher


class Writer:
    last_seq = 0

    def __init__(self) -> None:
        self.on_outbox: list[Any] = []


class SwallowingClient:
    """Publishes as aiomqtt on Python 3.11 can: a cancellation that arrives meanwhile is lost."""

    def __init__(self) -> None:
        self.publishing = asyncio.Event()
        self.published: list[str] = []

    async def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
        self.published.append(topic)
        self.publishing.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return  # the PUBACK "arrived" with the cancellation: wait_for returns the result


async def test_a_cancellation_swallowed_by_a_publish_still_ends_the_status_lane(tmp_path: Path) -> None:
    registry = DeviceRegistry({"AP-01": "purifier"})
    uplink = Uplink(UplinkSection(enabled=True), gateway_id="gw", org="o", db_path=tmp_path / "db",
                    writer=Writer(), dispatcher=Dispatcher(), registry=registry,  # type: ignore[arg-type]
                    metrics=Metrics(), clock=ManualClock(), version="t", started_at=0.0)
    client = SwallowingClient()
    lane = asyncio.create_task(uplink._status_lane(client))  # type: ignore[arg-type]
    registry.set_online("AP-01", True, 1.0)  # the device list changed: the lane publishes it
    await client.publishing.wait()
    lane.cancel()
    done, _ = await asyncio.wait({lane}, timeout=5)
    assert lane in done and lane.cancelled()
    assert client.published == ["v1/gateways/o/gw/devices"]
