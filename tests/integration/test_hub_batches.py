"""Hub batches through the embedded broker (real MQTT clients over TCP, SQLite on disk): reassembly in any
order, duplicates, one transaction per batch, the timeout on the injected clock, per-hub limits, the unmapped
list over REST, and a restart in the middle of a batch."""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Sequence
from typing import Any

import aiohttp
import aiomqtt
from firmware_sim.__main__ import build_parser
from firmware_sim.hub import HubOptions, SimulatedHub, batch_parts, beacon_mac, beacon_readings, delivery_order, run_hub

from gateway.core.clock import ManualClock
from gateway.core.models import HubBatchClosed, Reading, StoreRecord
from tests.fixtures.bthome_min import MiniBthomeDecoder, bthome_advert
from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, running, wait_for, write_config

LOGICAL = [f"T-{n}" for n in range(1, 21)]  # 2,000 beacons relayed for 20 logical devices, 100 each
REMAPPED = 2005  # a beacon the decoders know as T-6, which the hub's mapping names T-20
HUBS = f"""
[hubs]
max_open_batches = 3
[[hubs.mappings]]
hub = "HUB-1"
devices = {{ "beacon-a1" = "T-1", "beacon-a2" = "T-2" }}
macs = {{ "{beacon_mac(REMAPPED).lower()}" = "T-20" }}
"""


def hub_gateway(**config: Any) -> dict[str, Any]:
    devices = ["HUB-1", "HUB-2", "AP-01", *LOGICAL]
    kinds = {"HUB-1": "hub", "HUB-2": "hub", **{d: "sensor" for d in LOGICAL}}
    return {"devices": devices, "kinds": kinds, "extra": HUBS, **config}


def with_decoder(gw: RunningGateway, beacons: int = 2000) -> RunningGateway:
    known = {beacon_mac(n): LOGICAL[n % 20] for n in range(beacons)}
    gw.gateway.hubs.set_decoder(MiniBthomeDecoder({**known, beacon_mac(REMAPPED): "T-6"}))
    return gw


def hub_client(gw: RunningGateway, hub_id: str = "HUB-1") -> aiomqtt.Client:
    # A hub's QoS 1 window of 20: a batch of 67 parts completes only if parts are acknowledged as they are stored.
    return aiomqtt.Client("127.0.0.1", gw.port, identifier=hub_id, username=hub_id,
                          password=device_password(hub_id), max_inflight_messages=20)


def part(batch_id: str, n: int, parts: int, readings: Sequence[object]) -> bytes:
    return json.dumps({"batchId": batch_id, "part": n, "parts": parts, "readings": list(readings)}).encode()


def count(gw: RunningGateway, table: str) -> int:
    return int(gw.query(f"SELECT count(*) FROM {table}")[0][0])


async def test_2000_beacons_out_of_order_and_duplicated_are_stored_once_in_one_transaction(
    gateway_factory: GatewayFactory,
) -> None:
    gw = with_decoder(await gateway_factory(**hub_gateway()))
    commits: list[list[StoreRecord]] = []
    gw.gateway.writer.on_commit.append(lambda records: commits.append(list(records)))
    rng = random.Random(7)
    readings = beacon_readings(2000, gw.gateway.clock.now() - 30, rng)
    parts = batch_parts("b-1", readings, 30)
    assert len(parts) == 67
    order = delivery_order(len(parts), rng, out_of_order=True, duplicates=15)
    last = order[-1]
    duplicates = sum(1 for i in order if i != last) - 66 + 1  # and one resend after the close
    async with hub_client(gw) as hub:
        for i in order:
            if i != last:
                await hub.publish("device/HUB-1/batch", parts[i], qos=1)
        # Every part so far was acknowledged, so each one is stored: 66 held, nothing of the batch applied yet.
        assert count(gw, "hub_parts") == 66
        assert count(gw, "readings") == 0
        await hub.publish("device/HUB-1/batch", parts[last], qos=1)
        assert count(gw, "readings") == 2000  # acknowledged once the whole batch is committed
        await hub.publish("device/HUB-1/batch", parts[0], qos=1)  # sent again after the close: a duplicate
    await gw.flush()
    rows = gw.query("SELECT device_id, ts FROM readings")
    assert len(rows) == len(set(rows)) == 2000  # none lost, none doubled
    assert {d: n for d, n in gw.query("SELECT device_id, count(*) FROM readings GROUP BY device_id")} == {
        d: 100 for d in LOGICAL}
    assert sorted(ts for _, ts in rows) == sorted(float(str(r["ts"])) for r in readings)
    assert count(gw, "hub_parts") == 0 and count(gw, "quarantine") == 0
    assert gw.query("SELECT hub_id, batch_id, complete FROM hub_batches_closed") == [("HUB-1", "b-1", 1)]
    closing = [c for c in commits if any(isinstance(r, HubBatchClosed) for r in c)]
    assert len(closing) == 1  # one transaction holds the batch's every reading
    assert not any(isinstance(r, Reading) for c in commits for r in c)
    [record] = [r for r in closing[0] if isinstance(r, HubBatchClosed)]
    assert len(record.readings) == 2000 and record.complete
    # the rssi the hub heard travels with the reading; the registry saw each logical device
    metrics = json.loads(gw.query("SELECT metrics FROM readings LIMIT 1")[0][0])
    assert {"temperature", "humidity", "battery", "rssi"} <= set(metrics)
    state = gw.gateway.registry.get("T-7")
    assert state is not None and state.last_seen is not None
    assert gw.counter("gateway_hub_parts_total", verdict="duplicate") == duplicates


async def test_a_batch_missing_a_part_is_quarantined_with_what_arrived_after_its_timeout(
    gateway_factory: GatewayFactory,
) -> None:
    clock = ManualClock()
    gw = with_decoder(await gateway_factory(clock=clock, **hub_gateway()))
    sim = SimulatedHub(HubOptions(hub_id="HUB-1", port=gw.port, password=device_password("HUB-1"), beacons=90,
                                  per_part=30, missing=1, seed=3), clock=clock.now)
    async with sim.client() as client:
        batch_id = await sim.send_batch(client)
    assert count(gw, "hub_parts") == 2
    clock.advance(59.0)
    gw.gateway.hubs.wake()
    assert gw.gateway.hubs.demux.next_deadline() == clock.now() + 1.0  # still open, its deadline ahead
    clock.advance(1.0)
    gw.gateway.hubs.wake()
    await wait_for(lambda: count(gw, "quarantine") == 2)
    reasons = {r for (r,) in gw.query("SELECT reason FROM quarantine")}
    [reason] = reasons
    assert reason.startswith(f"batch {batch_id!r} incomplete 60 s after its first part: 2 of 3 parts arrived")
    assert count(gw, "hub_parts") == 0 and count(gw, "readings") == 0
    payloads = [json.loads(p) for (p,) in gw.query("SELECT payload FROM quarantine")]
    assert {p["batchId"] for p in payloads} == {batch_id} and len({p["part"] for p in payloads}) == 2
    assert gw.gateway.hubs.demux.open_batches("HUB-1") == []


async def test_named_readings_unmapped_devices_and_bad_readings(gateway_factory: GatewayFactory) -> None:
    gw = with_decoder(await gateway_factory(**hub_gateway()), beacons=10)
    now = gw.gateway.clock.now()
    readings = [
        {"device": "beacon-a1", "ts": now - 5, "metrics": {"temperature": 21.5}, "battery": "ok"},
        {"device": "beacon-zz", "ts": now - 5, "metrics": {"temperature": 20.0}},  # not mapped
        {"device": "beacon-a2", "metrics": {"temperature": "warm"}},  # refused on its own
        {"mac": beacon_mac(REMAPPED), "rssi": -60, "adv": bthome_advert(19.5).hex()},  # mapped to T-20
        {"mac": beacon_mac(999), "adv": bthome_advert(19.5).hex()},  # no BLE device with this MAC
        {"mac": beacon_mac(1), "adv": "0201"},  # cut short: the decoder refuses it
        {"something": "else"},
    ]
    async with hub_client(gw) as hub:
        await hub.publish("device/HUB-1/batch", part("n-1", 1, 1, readings), qos=1)
        await hub.publish("device/HUB-1/batch", b'{"batchId": "x", "part": 2, "parts": 1, "readings": []}', qos=1)
    async with hub_client(gw, "AP-01") as purifier:  # not a hub
        await purifier.publish("device/AP-01/batch", part("p-1", 1, 1, []), qos=1)
    await gw.flush()
    assert sorted(gw.query("SELECT device_id, metrics, extra FROM readings")) == [
        ("T-1", '{"temperature":21.5}', '{"battery":"ok"}'),
        ("T-20", '{"temperature":19.5,"rssi":-60}', None),
    ]
    reasons = [r for (r,) in gw.query("SELECT reason FROM quarantine ORDER BY id")]
    assert any("metrics.temperature: expected a number" in r for r in reasons)
    assert any("cut short" in r for r in reasons)
    assert any('names its device by "device", or by "mac" and "adv"' in r for r in reasons)
    assert any("part: 2 is beyond parts (1)" in r for r in reasons)
    assert any("'AP-01' is not a hub" in r for r in reasons)
    assert len(reasons) == 5

    api = f"http://127.0.0.1:{gw.gateway.api.port if gw.gateway.api else 0}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api}/api/hubs/HUB-1/unmapped") as resp:
            assert resp.status == 200
            body = await resp.json()
        async with http.get(f"{api}/api/hubs/AP-01/unmapped") as resp:
            assert resp.status == 404
        async with http.get(f"{api}/api/openapi.json") as resp:
            assert "/api/hubs/{hubId}/unmapped" in (await resp.json())["paths"]
    assert body["hub"] == "HUB-1" and body["readings"] == 2 and body["notListed"] == 0
    listed = {(d["by"], d["name"]): d for d in body["devices"]}
    assert set(listed) == {("device", "beacon-zz"), ("mac", beacon_mac(999))}
    assert listed[("device", "beacon-zz")]["count"] == 1
    assert "no BLE device is configured with this MAC" in listed[("mac", beacon_mac(999))]["reason"]


async def test_without_ble_decoders_relayed_adverts_are_unmapped(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**hub_gateway(api="enabled = false"))
    async with hub_client(gw) as hub:
        await hub.publish("device/HUB-1/batch", part("a-1", 1, 1, beacon_readings(3, gw.gateway.clock.now(),
                                                                                     random.Random(1))), qos=1)
    await gw.flush()
    view = gw.gateway.hubs.view_unmapped("HUB-1")
    assert view is not None and view["readings"] == 3
    assert {d["reason"] for d in view["devices"]} == {"no BLE decoders in this gateway"}
    assert count(gw, "readings") == 0 and count(gw, "quarantine") == 0


async def test_one_open_batch_too_many_gives_up_the_oldest(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**hub_gateway(api="enabled = false"))
    now = gw.gateway.clock.now()

    def named(n: int) -> list[dict[str, Any]]:
        return [{"device": "beacon-a1", "ts": now - 10 + n, "metrics": {"n": n}}]

    async with hub_client(gw) as hub:
        for n in range(4):  # the hub may have 3 open (config); the 4th gives up the 1st
            await hub.publish("device/HUB-1/batch", part(f"b-{n}", 1, 2, named(n)), qos=1)
        for n in range(1, 4):
            await hub.publish("device/HUB-1/batch", part(f"b-{n}", 2, 2, named(10 + n)), qos=1)
        await hub.publish("device/HUB-1/batch", part("b-0", 2, 2, named(20)), qos=1)  # its batch was given up
    await gw.flush()
    assert sorted(json.loads(m)["n"] for (m,) in gw.query("SELECT metrics FROM readings")) == [1, 2, 3, 11, 12, 13]
    reasons = [r for (r,) in gw.query("SELECT reason FROM quarantine ORDER BY id")]
    assert len(reasons) == 2
    assert "given up for a newer batch: the hub had 3 batches open" in reasons[0]
    assert "part 2 of batch 'b-0' arrived after the batch was given up" in reasons[1]
    assert count(gw, "hub_parts") == 0


async def test_open_batches_resume_and_closed_ones_are_remembered_across_a_restart(tmp_path: Any) -> None:
    config = write_config(tmp_path, **hub_gateway(api="enabled = false"))
    clock = ManualClock()
    now = clock.now()

    def named(n: int) -> list[dict[str, Any]]:
        return [{"device": "beacon-a2", "ts": now - 10 + n, "metrics": {"n": n}}]

    async with running(config, clock=clock) as gw:
        async with hub_client(gw) as hub:
            await hub.publish("device/HUB-1/batch", part("r-1", 1, 3, named(1)), qos=1)
            await hub.publish("device/HUB-1/batch", part("r-1", 3, 3, named(3)), qos=1)
            await hub.publish("device/HUB-1/batch", part("c-1", 1, 1, named(0)), qos=1)
        assert count(gw, "hub_parts") == 2 and count(gw, "readings") == 1
    clock.advance(30.0)
    async with running(config, clock=clock) as gw:
        assert [b.batch_id for b in gw.gateway.hubs.demux.open_batches("HUB-1")] == ["r-1"]
        async with hub_client(gw) as hub:
            # Sent again, as after a PUBACK the restart cut off: duplicates, the closed batch's one too.
            await hub.publish("device/HUB-1/batch", part("c-1", 1, 1, named(0)), qos=1)
            await hub.publish("device/HUB-1/batch", part("r-1", 1, 3, named(1)), qos=1)
            await hub.publish("device/HUB-1/batch", part("r-1", 2, 3, named(2)), qos=1)
            await hub.publish("device/HUB-1/batch", part("o-1", 1, 2, named(4)), qos=1)  # left open
        assert sorted(json.loads(m)["n"] for (m,) in gw.query("SELECT metrics FROM readings")) == [0, 1, 2, 3]
        assert count(gw, "hub_parts") == 1 and count(gw, "quarantine") == 0
    clock.advance(61.0)
    async with running(config, clock=clock) as gw:  # the open batch's deadline ran out while it was down
        await wait_for(lambda: count(gw, "quarantine") == 1)
        [(reason,)] = gw.query("SELECT reason FROM quarantine")
        assert reason.startswith("batch 'o-1' incomplete 60 s after its first part: 1 of 2 parts arrived")
        assert count(gw, "hub_parts") == 0 and count(gw, "readings") == 4


async def test_a_hub_may_not_publish_a_batch_for_another_hub(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**hub_gateway(api="enabled = false"))
    with contextlib.suppress(aiomqtt.MqttError):  # the broker ends a connection that publishes outside its topics
        async with hub_client(gw, "HUB-2") as hub:
            await hub.publish("device/HUB-1/batch", part("x-1", 1, 2, []), qos=1)
    await wait_for(lambda: gw.counter("gateway_broker_acl_denied_total", action="publish") == 1)
    await gw.flush()
    assert count(gw, "hub_parts") == 0 and count(gw, "quarantine") == 0
    assert gw.gateway.hubs.demux.open_batches("HUB-1") == []


async def test_the_hub_simulator_cli_relays_batches_out_of_order_with_duplicates(
    gateway_factory: GatewayFactory,
) -> None:
    gw = with_decoder(await gateway_factory(**hub_gateway(api="enabled = false")), beacons=300)
    args = build_parser().parse_args([
        "hub", "--hub-id", "HUB-1", "--password-template", "pw-{id}", "--port", str(gw.port), "--beacons", "300",
        "--batches", "2", "--interval", "0", "--out-of-order", "--duplicates", "3", "--seed", "4"])
    assert await run_hub(args) == 0
    await gw.flush()
    rows = gw.query("SELECT device_id, ts FROM readings")
    assert len(rows) == len(set(rows)) == 600
    assert count(gw, "quarantine") == 0 and count(gw, "hub_parts") == 0
    assert gw.counter("gateway_hub_parts_total", verdict="duplicate") == 6


class BuggyDecoder(MiniBthomeDecoder):
    """A decoder with a bug for one MAC: the rest of the batch must still be stored."""

    def decode_raw(self, mac: str, adv: bytes, received_at: float) -> Reading | None:
        if mac == beacon_mac(3):
            raise IndexError("a decoder bug")
        return super().decode_raw(mac, adv, received_at)


async def test_a_decoder_bug_quarantines_only_its_reading(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**hub_gateway(api="enabled = false"))
    gw.gateway.hubs.set_decoder(BuggyDecoder({beacon_mac(n): LOGICAL[n] for n in range(10)}))
    async with hub_client(gw) as hub:
        readings = beacon_readings(10, gw.gateway.clock.now() - 5, random.Random(2))
        await hub.publish("device/HUB-1/batch", part("d-1", 1, 1, readings), qos=1)
    await gw.flush()
    assert count(gw, "readings") == 9
    [(device_id, reason)] = gw.query("SELECT device_id, reason FROM quarantine")
    assert device_id == "HUB-1"
    assert reason == "batch 'd-1' part 1: internal error in the BLE decoder: IndexError: a decoder bug"


async def test_a_config_reload_applies_new_mappings(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(**hub_gateway(api="enabled = false"))
    now = gw.gateway.clock.now()
    reading = {"device": "beacon-new", "ts": now - 5, "metrics": {"t": 1}}
    async with hub_client(gw) as hub:
        await hub.publish("device/HUB-1/batch", part("m-1", 1, 1, [reading]), qos=1)
        view = gw.gateway.hubs.view_unmapped("HUB-1")
        assert view is not None and [d["name"] for d in view["devices"]] == ["beacon-new"]
        text = gw.config_path.read_text().replace('"beacon-a2" = "T-2"', '"beacon-a2" = "T-2", "beacon-new" = "T-3"')
        gw.config_path.write_text(text)
        assert gw.gateway.reload()
        await hub.publish("device/HUB-1/batch", part("m-2", 1, 1, [{**reading, "ts": now - 4}]), qos=1)
    assert gw.query("SELECT device_id FROM readings") == [("T-3",)]


async def test_relayed_adverts_go_through_the_gateways_ble_decoders_and_a_repeat_is_not_unmapped(
    gateway_factory: GatewayFactory,
) -> None:
    """The hub and the gateway's own radio share one BleAdvertDecoder: a BLE device configured by MAC is
    decoded from a relayed advert; the same advert relayed again is a repeat (stored once, not listed as
    unmapped); an unknown MAC is listed as unmapped."""
    ble = ('\n[ble]\nradio = false\n[[ble.devices]]\nid = "B-1"\nformat = "bthome"\n'
           f'mac = "{beacon_mac(1)}"\n')
    gw = await gateway_factory(**hub_gateway(extra=HUBS + ble))
    now = gw.gateway.clock.now()
    advert = {"mac": beacon_mac(1), "rssi": -60, "adv": bthome_advert(21.5, 40.0, 90).hex()}
    stranger = {"mac": beacon_mac(2), "adv": bthome_advert(19.0).hex()}
    async with hub_client(gw) as hub:
        await hub.publish("device/HUB-1/batch", part("r-1", 1, 1, [advert]), qos=1)
        await hub.publish("device/HUB-1/batch", part("r-2", 1, 1, [advert, stranger]), qos=1)
    await gw.flush()
    rows = gw.query("SELECT device_id, metrics FROM readings")
    assert [d for d, _ in rows] == ["B-1"]
    assert json.loads(rows[0][1])["temperature"] == 21.5
    view = gw.gateway.hubs.view_unmapped("HUB-1")
    assert view is not None
    assert [(d["name"], d["reason"]) for d in view["devices"]] == [
        (beacon_mac(2), "no BLE device is configured with this MAC")]
    assert count(gw, "quarantine") == 0
    assert now <= float(gw.query("SELECT received_at FROM readings")[0][0])
