"""The gateway under sustained load: simulated purifiers publish and now and then lose their connection.

The smoke run (seconds) is part of the default run; the soak (10 minutes) is opt-in: `pytest -m soak`.
What must hold however long it runs: every reading a purifier was acknowledged is stored, nothing is
quarantined, and when the purifiers are gone the gateway is back to the tasks it had before they came
(a connection that leaves a task behind would grow the daemon for ever).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest
from firmware_sim.purifier import SimulatedPurifier

from tests.fixtures.gateway import GatewayFactory, cancel_and_wait, device_password, wait_for


@dataclass(frozen=True)
class Load:
    purifiers: int
    interval: float  # seconds between one purifier's readings
    readings: int  # the load runs until this many readings per purifier were acknowledged
    drop_every: int  # acknowledged readings between two connections dropped without a goodbye (a power cut)


LOADS = [
    pytest.param(Load(purifiers=5, interval=0.05, readings=50, drop_every=40), id="smoke"),  # ~3 s
    pytest.param(Load(purifiers=50, interval=0.5, readings=1200, drop_every=500), id="soak",  # ~10 min
                 marks=[pytest.mark.soak, pytest.mark.timeout(1800)]),
]


@pytest.mark.parametrize("load", LOADS)
async def test_sustained_load_with_dropped_connections_stores_everything_and_leaves_nothing_behind(
    gateway_factory: GatewayFactory, load: Load
) -> None:
    devices = [f"AP-{i:02d}" for i in range(1, load.purifiers + 1)]
    gw = await gateway_factory(devices=devices, api="enabled = false")
    tasks_before = len(asyncio.all_tasks())
    sims = [SimulatedPurifier(device_id=d, password=device_password(d), port=gw.port, interval=load.interval,
                              seed=i, backoff_initial=0.05, backoff_max=0.2) for i, d in enumerate(devices)]
    runs = [asyncio.create_task(sim.run(), name=f"sim-{sim.device_id}") for sim in sims]
    dropped = 0
    try:
        async with asyncio.timeout(10):
            await asyncio.gather(*(sim.wait_connected() for sim in sims))
        rng = random.Random(19)
        next_drop = load.drop_every
        while (acknowledged := sum(sim.published for sim in sims)) < load.purifiers * load.readings:
            if acknowledged >= next_drop:
                dropped += rng.choice(sims).abort_connection()
                next_drop += load.drop_every
            await asyncio.sleep(load.interval)
        for sim in sims:
            sim.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(*runs)
    finally:
        for run in runs:
            await cancel_and_wait(run)
    await wait_for(lambda: gw.gateway.registry.online_count() == 0, timeout=10)
    await gw.flush()
    stored = dict(gw.query("SELECT device_id, count(*) FROM readings GROUP BY device_id"))
    for sim in sims:
        assert stored.get(sim.device_id, 0) >= sim.published, sim.device_id  # acknowledged, so stored
    assert gw.query("SELECT count(*) FROM quarantine") == [(0,)]
    assert dropped > 0
    await wait_for(lambda: len(asyncio.all_tasks()) == tasks_before, timeout=10)
