"""The hub kind's payloads (drivers/hub.py) and the hub simulator's batches (firmware_sim/hub.py)."""

from __future__ import annotations

import json
import random
import re

import pytest
from firmware_sim.hub import HubOptions, SimulatedHub, batch_parts, beacon_mac, beacon_readings, delivery_order

from drivers.hub import HubDriver
from gateway.core.errors import PayloadError
from gateway.core.hub_batches import AdvertEntry, NamedEntry, RefusedEntry
from tests.fixtures.bthome_min import MiniBthomeDecoder

HUB = HubDriver()


@pytest.mark.parametrize(("payload", "reason"), [
    (b'{"part": 1, "parts": 1, "readings": []}', "batchId: expected a string"),
    (b'{"batchId": "b", "part": 0, "parts": 1, "readings": []}', "part: expected a whole number >= 1"),
    (b'{"batchId": "b", "part": 1, "parts": true, "readings": []}', "parts: expected a whole number >= 1"),
    (b'{"batchId": "b", "part": 3, "parts": 2, "readings": []}', "part: 3 is beyond parts (2)"),
    (b'{"batchId": "b", "part": 1, "parts": 1, "readings": {}}', "readings: expected an array"),
    (b'{"batchId": "b", "part": 1, "parts": 1, "readings": [NaN]}', "NaN is not a JSON value"),
    (b"[1]", "not a JSON object"),
])
def test_a_part_that_is_not_a_part_says_why(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=re.escape(reason)):
        HUB.decode_part(payload)


def test_entries_name_their_device_or_carry_an_advert_or_are_refused_alone() -> None:
    readings = [
        {"device": "a1", "ts": 1763800000, "metrics": {"t": 1}},
        {"mac": "c4:7c:8d:6a:01:02", "rssi": -71, "adv": "020106", "ts": 1763800000000},
        {"mac": "C4:7C:8D:6A:01:02", "adv": "zz"},
        {"mac": "C4-7C-8D-6A-01-02", "adv": "00"},
        {"mac": "C4:7C:8D:6A:01:02", "adv": "00", "rssi": 99},
        {"device": ""},
        "text",
    ]
    payload = json.dumps({"batchId": "b", "part": 1, "parts": 1, "readings": readings}).encode()
    assert HUB.decode_part(payload).readings == 7
    named, advert, *refused = HUB.decode_entries(payload)
    assert isinstance(named, NamedEntry) and named.name == "a1"
    assert isinstance(advert, AdvertEntry)
    assert (advert.mac, advert.adv, advert.ts, advert.rssi) == ("C4:7C:8D:6A:01:02", b"\x02\x01\x06", 1763800000.0, -71)
    assert all(isinstance(r, RefusedEntry) for r in refused)
    reasons = [r.reason for r in refused if isinstance(r, RefusedEntry)]
    assert [reason.split(":")[0] for reason in reasons] == [
        "readings[2].adv", "readings[3].mac", "readings[4].rssi", "readings[5].device", "readings[6]"]
    reading = HUB.decode_named("T-1", named, 1763800001.0)
    assert (reading.device_id, reading.ts, reading.metrics, reading.extra) == ("T-1", 1763800000.0, {"t": 1}, {})


def test_the_simulator_relays_2000_beacons_in_67_parts_that_the_tests_decoder_reads() -> None:
    readings = beacon_readings(2000, 1763800000.0, random.Random(1))
    parts = batch_parts("b-1", readings, 30)
    assert len(parts) == 67 and all(len(p) < 64 * 1024 for p in parts)
    headers = [HUB.decode_part(p) for p in parts]
    assert [(h.part, h.parts) for h in headers] == [(n, 67) for n in range(1, 68)]
    assert sum(h.readings for h in headers) == 2000
    decoder = MiniBthomeDecoder({beacon_mac(7): "T-8"})
    entry = HUB.decode_entries(parts[0])[7]
    assert isinstance(entry, AdvertEntry)
    reading = decoder.decode_raw(entry.mac, entry.adv, 1763800000.0)
    assert reading is not None and reading.device_id == "T-8"
    assert set(reading.metrics) == {"battery", "temperature", "humidity"}
    assert 18.0 <= float(reading.metrics["temperature"]) <= 26.0


def test_the_simulators_delivery_order_shuffles_repeats_and_leaves_out_parts() -> None:
    rng = random.Random(5)
    assert delivery_order(5, rng) == [0, 1, 2, 3, 4]
    order = delivery_order(67, rng, out_of_order=True, duplicates=5, missing=2)
    assert len(order) == 70 and len(set(order)) == 65
    assert order != sorted(order)
    for index in {i for i in order if order.count(i) == 2}:  # a repeat comes after the first copy
        first = order.index(index)
        assert index in order[first + 1:]


def test_the_hub_simulator_never_stamps_two_relayed_readings_with_one_time() -> None:
    """Batches sent back to back (no interval) must not overlap their millisecond stamps: beacon n of the
    second batch would get beacon n+k's time of the first, and two readings of one logical device one time."""
    hub = SimulatedHub(HubOptions(hub_id="HUB-1", beacons=300), clock=lambda: 1763800000.0)
    stamps = []
    for _ in range(3):
        _, parts, _ = hub.next_batch()
        hub.batches += 1
        stamps += [r["ts"] for p in parts for r in json.loads(p)["readings"]]
    assert len(stamps) == len(set(stamps)) == 900
