"""Overload without collapse: when devices offer more than the store can take, the cloud link keeps its share.

Both LAN broker backends. The store is made slower than the devices' offer (each committed reading costs it
a fixed pause: an SD card that cannot keep up), so its queue stays full, and the figures are counts: how
many readings reached the cloud by the time a given number was committed, not rates against a wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from gateway.core.models import Reading, StoreRecord
from tests.bench.mqttload import Device, reading_payload
from tests.fixtures.cloud import Cloud, uplink_config
from tests.fixtures.gateway import GatewayFactory, device_password, wait_for

DEVICES = [f"AP-0{i}" for i in range(1, 6)]
STORE_PAUSE_PER_READING_S = 0.002  # the store takes ~500 readings/s; five devices offer several times that
WINDOW = 100  # QoS 1 messages each device keeps in flight: 500 in all, twice the store's queue (250)
PER_DEVICE = 300
CHECKED_AT = 800  # readings committed when the cloud's count is taken


async def _flood(device: Device) -> None:
    topic = f"device/{device.device_id}/data"
    for seq in range(PER_DEVICE):
        await device.publish(topic, reading_payload(seq))


async def test_the_cloud_link_delivers_while_the_store_cannot_keep_up_and_nothing_is_lost(
    lan_gateway_factory: GatewayFactory, cloud: Cloud
) -> None:
    gw = await lan_gateway_factory(devices=DEVICES, extra=uplink_config(cloud.broker.port))
    uplink = gw.gateway.uplink
    assert uplink is not None
    await wait_for(lambda: uplink.state.connected, timeout=10)
    writer = gw.gateway.writer
    commit = writer._commit

    async def slow_commit(batch: list[StoreRecord]) -> int:
        await asyncio.sleep(STORE_PAUSE_PER_READING_S * sum(isinstance(r, Reading) for r in batch))
        return await commit(batch)

    writer._commit = slow_commit  # type: ignore[method-assign]
    devices = [Device(d, device_password(d), 1, window=WINDOW) for d in DEVICES]
    for device in devices:
        await device.connect("127.0.0.1", gw.port)
    floods = [asyncio.create_task(_flood(d)) for d in devices]
    try:
        await wait_for(lambda: gw.counter("gateway_readings_committed_total") >= CHECKED_AT, timeout=60)
        committed = gw.counter("gateway_readings_committed_total")
        delivered = len(cloud.telemetry())
        offered = sum(d.sent for d in devices)
        assert offered - committed >= 250  # the premise: more on its way than the store's queue holds
        # Were the uplink's deletes to wait behind the devices' readings, one in-flight window (20) would
        # go per full queue (250) committed: under 15 % of what was stored would reach the cloud during the load.
        assert delivered >= 0.5 * committed, (delivered, committed)
        await asyncio.gather(*floods)
    finally:
        for task in floods:
            task.cancel()
        await asyncio.gather(*floods, return_exceptions=True)
    await _settle(devices)
    total = PER_DEVICE * len(DEVICES)
    await wait_for(lambda: int(gw.query("SELECT count(*) FROM readings")[0][0]) == total, timeout=60)
    await wait_for(lambda: len(set(cloud.msg_ids())) == total, timeout=60)  # nothing lost on the way


async def _settle(devices: Sequence[Device]) -> None:
    await asyncio.gather(*(d.settle(timeout=60) for d in devices))
    for device in devices:
        with contextlib.suppress(ConnectionError):
            await device.close()
