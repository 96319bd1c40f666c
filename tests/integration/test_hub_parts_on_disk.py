"""Hub batches whose parts wait in SQLite, not in memory (real broker, real MQTT clients, SQLite on disk):
the demultiplexer keeps part numbers and sizes; a batch that completes or is given up reads its parts back;
a given-up batch's parts are quarantined whole, one row per part, and can be replayed from the quarantine."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import random
import sqlite3
import sys
from typing import Any

from firmware_sim.hub import batch_parts, beacon_readings

from gateway.core.clock import ManualClock
from gateway.store.record_kinds import QUARANTINE_KEEP_BYTES
from tests.fixtures.gateway import GatewayFactory, wait_for
from tests.integration.test_hub_batches import count, hub_client, hub_gateway, part, with_decoder


def deep_size(root: object) -> int:
    """Bytes of every object reachable from `root` (each counted once; classes and modules not followed)."""
    seen: set[int] = set()
    stack, total = [root], 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type | type(sys)):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        stack.extend(gc.get_referents(obj))
    return total


async def test_open_batches_hold_their_parts_in_sqlite_not_in_memory(gateway_factory: GatewayFactory) -> None:
    gw = with_decoder(await gateway_factory(**hub_gateway(api="enabled = false")))
    now = gw.gateway.clock.now()
    padding = "x" * 20_000  # kept by the reading as an unknown field: each part ~60 KB
    parts = [part("big-1", n, 12, [{"device": "beacon-a1", "ts": now - 100 + n * 3 + i, "metrics": {"n": n},
                                    "note": padding} for i in range(3)]) for n in range(1, 13)]
    demux = gw.gateway.hubs.demux
    empty = deep_size(demux)
    async with hub_client(gw) as hub:
        for payload in parts[:-1]:
            await hub.publish("device/HUB-1/batch", payload, qos=1)
        held = sum(len(p) for p in parts[:-1])
        assert held > 600_000 and demux.held_bytes("HUB-1") == held  # counted against the hub's limit ...
        assert count(gw, "hub_parts") == 11
        assert deep_size(demux) - empty < 20_000  # ... but not held in memory: numbers and sizes only
        await hub.publish("device/HUB-1/batch", parts[-1], qos=1)
    assert count(gw, "readings") == 36 and count(gw, "hub_parts") == 0 and count(gw, "quarantine") == 0
    assert sorted(json.loads(m)["n"] for (m,) in gw.query("SELECT metrics FROM readings")) == sorted(
        n for n in range(1, 13) for _ in range(3))


async def test_a_batch_whose_held_part_the_store_lost_is_given_up_not_applied_with_a_hole(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(**hub_gateway(api="enabled = false"))
    now = gw.gateway.clock.now()
    named = [[{"device": "beacon-a1", "ts": now - 10 + n, "metrics": {"n": n}}] for n in range(3)]
    async with hub_client(gw) as hub:
        await hub.publish("device/HUB-1/batch", part("h-1", 1, 3, named[0]), qos=1)
        await hub.publish("device/HUB-1/batch", part("h-1", 2, 3, named[1]), qos=1)
        with contextlib.closing(sqlite3.connect(gw.db_path)) as conn:  # as if the store had refused part 2's row
            conn.execute("DELETE FROM hub_parts WHERE part = 2")
            conn.commit()
        await hub.publish("device/HUB-1/batch", part("h-1", 3, 3, named[2]), qos=1)
    await gw.flush()
    assert count(gw, "readings") == 0
    rows = gw.query("SELECT reason, payload FROM quarantine ORDER BY received_at")
    assert [json.loads(p)["part"] for _, p in rows] == [1, 3]
    assert rows[0][0] == "batch 'h-1' lost a part held in the store: 2 of 3 parts arrived (missing: 2)"


def beacon_parts(batch_id: str, heard_at: float, per_part: int, parts: int = 3) -> list[bytes]:
    return batch_parts(batch_id, beacon_readings(parts * per_part, heard_at, random.Random(5)), per_part)


async def test_a_given_up_batch_is_quarantined_whole_one_row_per_part_and_can_be_replayed(
    gateway_factory: GatewayFactory,
) -> None:
    clock = ManualClock()
    gw = with_decoder(await gateway_factory(clock=clock, **hub_gateway(api="enabled = false")))
    parts = beacon_parts("q-1", clock.now() - 30, 45)
    assert all(len(p) > QUARANTINE_KEEP_BYTES for p in parts)  # 45 relayed readings: ~5 KB a part
    async with hub_client(gw) as hub:
        for payload in (parts[2], parts[0]):
            await hub.publish("device/HUB-1/batch", payload, qos=1)
    clock.advance(60.0)
    gw.gateway.hubs.wake()
    await wait_for(lambda: count(gw, "quarantine") == 2)
    rows: list[Any] = gw.query("SELECT payload, size, sha256, reason FROM quarantine ORDER BY id")
    assert [bytes(p) for p, *_ in rows] == [parts[0], parts[2]]  # each whole, in part order
    assert all(size == len(p) and sha == hashlib.sha256(p).hexdigest() for p, size, sha, _ in rows)
    assert all("2 of 3 parts arrived (missing: 2)" in reason for *_, reason in rows)
    assert count(gw, "readings") == 0
    async with hub_client(gw) as hub:  # the missing part, late: kept whole with its batch's other parts
        await hub.publish("device/HUB-1/batch", parts[1], qos=1)
    await gw.flush()
    [(late, reason)] = gw.query("SELECT payload, reason FROM quarantine ORDER BY id DESC LIMIT 1")
    assert bytes(late) == parts[1] and "part 2 of batch 'q-1' arrived after the batch was given up" in reason

    # Replayed from the quarantine alone once the batch id is forgotten (a timeout after its close).
    clock.advance(61.0)
    async with hub_client(gw) as hub:
        for (payload,) in gw.query("SELECT payload FROM quarantine ORDER BY id"):
            await hub.publish("device/HUB-1/batch", bytes(payload), qos=1)
    await gw.flush()
    assert count(gw, "readings") == 135 and count(gw, "quarantine") == 3 and count(gw, "hub_parts") == 0
