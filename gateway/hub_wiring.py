"""Composition of the hub demultiplexer (gateway/ingest/hub_intake.py) from the config: called by app.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import aiosqlite

from gateway.core.clock import Clock
from gateway.core.hub_batches import AdvertDecoder, HubDriver
from gateway.core.links import DeviceDriver
from gateway.core.metrics import Metrics
from gateway.core.registry import DeviceRegistry
from gateway.ingest.demux import DemuxLimits
from gateway.ingest.hub_intake import HubIntake, Put
from gateway.ingest.hub_readings import HubMap
from gateway.ingest.service import Ingest
from gateway.settings_hubs import HUB_KIND, HubsSection
from gateway.store.queries import load_hub_closed, load_hub_part_sizes


def hub_maps(section: HubsSection) -> dict[str, HubMap]:
    """Each hub's logical devices; MACs upper case (the config may write them in either case)."""
    return {m.hub: HubMap(dict(m.devices), {mac.upper(): d for mac, d in m.macs.items()}) for m in section.mappings}


def build_hub_intake(
    section: HubsSection,
    *,
    ingest: Ingest,
    put: Put,
    registry: DeviceRegistry,
    driver_of: Callable[[str], DeviceDriver | None],
    decoder: AdvertDecoder | None,
    clock: Clock,
    metrics: Metrics,
) -> HubIntake:
    def hub_driver_of(device_id: str) -> HubDriver | None:
        driver = driver_of(device_id)
        return cast(HubDriver, driver) if driver is not None and driver.kind == HUB_KIND else None

    def last_seen(device_id: str) -> float | None:
        state = registry.get(device_id)
        return state.last_seen if state is not None else None

    return HubIntake(
        limits=DemuxLimits(timeout=section.batch_timeout_seconds, max_open=section.max_open_batches,
                           max_bytes=section.max_bytes_held, max_parts=section.max_parts),
        maps=hub_maps(section), ingest=ingest, put=put, driver_of=hub_driver_of,
        configured=lambda device_id: registry.kind(device_id) is not None, decoder=decoder, clock=clock,
        metrics=metrics, last_seen=last_seen, offline_after=section.offline_after_seconds,
        max_unmapped_listed=section.max_unmapped_listed,
    )


async def restore_hub_batches(hubs: HubIntake, conn: aiosqlite.Connection, now: float) -> None:
    """Start-up: the batches open at the last stop resume (their parts stay in SQLite until they close); the ones
    closed within the timeout are remembered."""
    hubs.restore(await load_hub_part_sizes(conn), await load_hub_closed(conn, now - hubs.demux.limits.timeout))
