"""A complete hub batch -> the readings of its logical devices, and what is quarantined on its own.

Each entry of each part, in part order: a reading named by `device` is the reading of the configured device
the hub's mapping names; a relayed advertisement (`mac` + `adv`) is decoded by the BLE decoders as if the
gateway had heard it (its device is the decoders' configured one, or the hub mapping's for that MAC).
Every reading passes ingest's checks (Ingest.admit). A reading that fails them, or that the driver or a
decoder refuses, is quarantined with its reason; one whose device is not configured is counted and listed as
unmapped. No I/O: the caller stores the result in one transaction. The configured devices heard (a reading,
or a repeat of a configured advertiser's advertisement) are collected for their presence.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.core.errors import PayloadError
from gateway.core.hub_batches import AdvertDecoder, AdvertEntry, HubDriver, NamedEntry
from gateway.core.models import Quarantined, Reading
from gateway.ingest.demux import OpenBatch
from gateway.ingest.unmapped import UnmappedDevices


@dataclass(slots=True, frozen=True)
class HubMap:
    """A hub's logical devices: its names and relayed MACs (upper case) -> configured device ids."""

    devices: dict[str, str] = field(default_factory=dict)
    macs: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Resolved:
    readings: list[Reading] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    heard: dict[str, None] = field(default_factory=dict)  # configured devices the batch brought news of, in order


class BatchResolver:
    def __init__(
        self,
        *,
        decoder: AdvertDecoder | None,
        admit: Callable[[Reading], None],
        configured: Callable[[str], bool],
        unmapped: UnmappedDevices,
    ) -> None:
        self.decoder = decoder  # None: no BLE decoders in this gateway (relayed adverts are unmapped)
        self._admit = admit  # ingest's checks; raises PayloadError
        self._configured = configured  # is this a configured device id?
        self._unmapped = unmapped

    def resolve_part(self, out: Resolved, batch: OpenBatch, number: int, payload: bytes, at: float,
                     driver: HubDriver, hub_map: HubMap, topic: str) -> None:
        """Part `number` of the batch, received at `at`, into `out` (a batch is resolved part by part, in part
        order)."""
        hub_id = batch.hub_id
        where = f"batch {batch.batch_id!r} part {number}"
        try:
            entries = driver.decode_entries(payload)
        except PayloadError as exc:  # checked on arrival; a part restored from an older version may differ
            out.quarantined.append(Quarantined(at, hub_id, topic, payload, f"{where}: {exc}", hub_id, whole=True))
            return
        for entry in entries:
            device_id = hub_id  # whose quarantine row it is
            try:
                if isinstance(entry, NamedEntry):
                    mapped = hub_map.devices.get(entry.name)
                    if mapped is None:
                        self._note(hub_id, "device", entry.name, "no mapping for this name in the hub's "
                                   "config", at, entry.body)
                        continue
                    device_id = mapped
                    reading = driver.decode_named(mapped, entry, at)
                elif isinstance(entry, AdvertEntry):
                    found = self._advert(hub_id, entry, hub_map, at, out.heard)
                    if found is None:
                        continue
                    reading = found
                    device_id = reading.device_id
                else:
                    raise PayloadError(entry.reason)
                self._admit(reading)
            except PayloadError as exc:
                out.quarantined.append(Quarantined(at, hub_id, topic, _text(entry.body).encode(), f"{where}: {exc}",
                                                   device_id))
                continue
            out.readings.append(reading)
            out.heard[device_id] = None

    def _advert(self, hub_id: str, entry: AdvertEntry, hub_map: HubMap, at: float,
                heard: dict[str, None]) -> Reading | None:
        """The advertisement's reading under its device's id; None when it is unmapped (noted) or nothing new (its
        device is then added to `heard`)."""
        if self.decoder is None:
            self._note(hub_id, "mac", entry.mac, "no BLE decoders in this gateway", at, entry.body)
            return None
        try:
            decoded = self.decoder.decode_raw(entry.mac, entry.adv, at)
        except PayloadError:
            raise
        except Exception as exc:  # a decoder's bug must not lose the rest of the batch: this one is quarantined
            raise PayloadError(f"internal error in the BLE decoder: {type(exc).__name__}: {exc}"[:300]) from exc
        if decoded is None:
            known = self.decoder.configured_device(entry.mac)
            if known is None:
                self._note(hub_id, "mac", entry.mac, "no BLE device is configured with this MAC", at, entry.body)
            elif self._configured(mapped := hub_map.macs.get(entry.mac, known)):
                heard[mapped] = None  # a repeat of what this device already said: nothing new to store, but heard
            return None
        device_id = hub_map.macs.get(entry.mac, decoded.device_id)
        if not self._configured(device_id):
            self._note(hub_id, "mac", entry.mac, f"decoded as {device_id!r}, which is not a configured device", at,
                       entry.body)
            return None
        metrics = decoded.metrics
        if entry.rssi is not None and "rssi" not in metrics:
            metrics = {**metrics, "rssi": entry.rssi}
        ts = entry.ts if entry.ts is not None else decoded.ts
        return Reading(device_id, ts, metrics, at, decoded.extra)

    def _note(self, hub_id: str, by: str, name: str, reason: str, at: float, body: Any) -> None:
        self._unmapped.note(hub_id, by, name, reason, at, body)


def _text(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
