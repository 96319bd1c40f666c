"""Presence of the logical devices hubs relay (real broker, real MQTT clients, SQLite on disk, the injected
clock): online when a batch brings a reading of theirs, offline after `hubs.offline_after_seconds` unheard,
with the device.online/offline events."""

from __future__ import annotations

import json

from firmware_sim.hub import beacon_mac

from gateway.core.clock import ManualClock
from tests.fixtures.bthome_min import bthome_advert
from tests.fixtures.gateway import GatewayFactory, RunningGateway, wait_for
from tests.integration.test_hub_batches import HUBS, hub_client, hub_gateway, part, with_decoder

OFFLINE_AFTER = HUBS.replace("max_open_batches = 3", "max_open_batches = 3\noffline_after_seconds = 120")


def presence_events(gw: RunningGateway) -> list[tuple[str, str, str]]:
    return [(d, t, json.loads(data)["reason"]) for d, t, data in gw.query(
        "SELECT device_id, type, data FROM events WHERE type LIKE 'device.o%' AND device_id != 'HUB-1' ORDER BY id")]


def online(gw: RunningGateway, device_id: str) -> bool:
    state = gw.gateway.registry.get(device_id)
    return state is not None and state.online


async def test_relayed_devices_go_online_with_a_reading_and_offline_after_a_silence(
    gateway_factory: GatewayFactory,
) -> None:
    clock = ManualClock()
    gw = await gateway_factory(clock=clock, **hub_gateway(api="enabled = false", extra=OFFLINE_AFTER))

    def named(device: str, n: int) -> dict[str, object]:
        return {"device": device, "ts": clock.now() - 5, "metrics": {"n": n}}

    async with hub_client(gw) as hub:
        await hub.publish("device/HUB-1/batch", part("p-1", 1, 1, [named("beacon-a1", 1), named("beacon-a2", 1)]),
                          qos=1)
        await gw.flush()
        assert online(gw, "T-1") and online(gw, "T-2")
        assert presence_events(gw) == [("T-1", "device.online", "relayed"), ("T-2", "device.online", "relayed")]
        clock.advance(100.0)
        await hub.publish("device/HUB-1/batch", part("p-2", 1, 1, [named("beacon-a2", 2)]), qos=1)  # T-2 again
        clock.advance(19.0)
        gw.gateway.hubs.wake()
        await gw.flush()
        assert online(gw, "T-1")  # 119 s unheard
        clock.advance(1.0)
        gw.gateway.hubs.wake()
        await wait_for(lambda: not online(gw, "T-1"))
        await gw.flush()
        assert online(gw, "T-2")
        assert presence_events(gw)[2:] == [("T-1", "device.offline", "silent")]
        clock.advance(100.0)  # T-2: 120 s after its last reading
        gw.gateway.hubs.wake()
        await wait_for(lambda: not online(gw, "T-2"))
        clock.advance(5.0)
        await hub.publish("device/HUB-1/batch", part("p-3", 1, 1, [named("beacon-a1", 3)]), qos=1)  # T-1 is back
        await gw.flush()
    assert online(gw, "T-1")
    assert presence_events(gw)[3:] == [("T-2", "device.offline", "silent"), ("T-1", "device.online", "relayed")]
    assert gw.gateway.hubs.presence.online() == ["T-1"]


async def test_a_repeated_advertisement_keeps_a_relayed_ble_device_online(gateway_factory: GatewayFactory) -> None:
    """A sensor whose advertisement does not change is stored only now and then (a repeat is nothing new), but
    it is heard: it must not go offline between its stored readings."""
    clock = ManualClock()
    ble = f'\n[ble]\nradio = false\n[[ble.devices]]\nid = "B-1"\nformat = "bthome"\nmac = "{beacon_mac(1)}"\n'
    gw = await gateway_factory(clock=clock, **hub_gateway(api="enabled = false", extra=OFFLINE_AFTER + ble))
    advert = {"mac": beacon_mac(1), "adv": bthome_advert(21.5).hex()}
    async with hub_client(gw) as hub:
        for n in range(4):
            await hub.publish("device/HUB-1/batch", part(f"r-{n}", 1, 1, [advert]), qos=1)
            clock.advance(100.0)
            gw.gateway.hubs.wake()
            await gw.flush()
            assert online(gw, "B-1")
    assert int(gw.query("SELECT count(*) FROM readings")[0][0]) == 1  # the repeats were not stored
    assert [e[1] for e in presence_events(gw)] == ["device.online"]
    clock.advance(20.0)
    gw.gateway.hubs.wake()
    await wait_for(lambda: not online(gw, "B-1"))


async def test_a_device_another_link_still_hears_is_not_sent_offline_by_the_hub(
    gateway_factory: GatewayFactory,
) -> None:
    clock = ManualClock()
    gw = with_decoder(await gateway_factory(clock=clock, **hub_gateway(api="enabled = false", extra=OFFLINE_AFTER)))
    async with hub_client(gw) as hub:
        await hub.publish("device/HUB-1/batch", part("o-1", 1, 1, [
            {"device": "beacon-a1", "ts": clock.now() - 5, "metrics": {"n": 1}}]), qos=1)
    clock.advance(90.0)
    gw.gateway.ingest.seen("T-1", clock.now())  # heard by another link (as the BLE scanner calls it)
    clock.advance(60.0)
    gw.gateway.hubs.wake()  # T-1 is due: the timer finds it was heard 60 s ago and looks again 60 s from now
    await wait_for(lambda: gw.gateway.hubs.presence.next_deadline() == clock.now() - 60.0 + 120.0)
    await gw.flush()
    assert online(gw, "T-1")
