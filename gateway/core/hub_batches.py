"""Ports and value objects of hub batches (CONTRACT section 3): what a hub driver decodes, what the BLE
decoders offer the demultiplexer. No I/O.

A hub publishes a batch in parts on `device/{hubId}/batch`. Its driver (drivers/hub.py) checks each part as
it arrives (:meth:`HubDriver.decode_part`: the header and the shape of its readings) and, once the batch is
complete, turns each part's readings into entries: a reading of a logical device named by the hub
(:class:`NamedEntry`), a relayed BLE advertisement (:class:`AdvertEntry`), or a reading refused on its own
(:class:`RefusedEntry`, quarantined with its reason while the rest of the batch is stored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from gateway.core.links import MqttDeviceDriver
from gateway.core.models import Reading


@dataclass(slots=True, frozen=True)
class BatchPart:
    """The header of one part: `{"batchId", "part", "parts", "readings": [...]}` (part counts from 1)."""

    batch_id: str
    part: int
    parts: int
    readings: int  # how many readings the part carries


@dataclass(slots=True, frozen=True)
class NamedEntry:
    """A reading of a logical device the hub names by `device`; `body` is the reading's JSON object."""

    name: str
    body: dict[str, Any]


@dataclass(slots=True, frozen=True)
class AdvertEntry:
    """A BLE advertisement the hub heard: decoded by the BLE decoders as if the gateway had heard it."""

    mac: str  # upper case, colon separated
    adv: bytes
    ts: float | None  # when the hub heard it (None: when the part arrived)
    rssi: int | None
    body: dict[str, Any]  # the entry as the hub sent it (for the quarantine or the unmapped list)


@dataclass(slots=True, frozen=True)
class RefusedEntry:
    """A reading of the batch that is not a reading (its reason), quarantined on its own."""

    reason: str
    body: Any  # what the hub sent in the reading's place


BatchEntry = NamedEntry | AdvertEntry | RefusedEntry


class HubDriver(MqttDeviceDriver, Protocol):
    """A device kind that relays the readings of many logical devices in batches (a hub)."""

    def decode_part(self, payload: bytes) -> BatchPart:
        """Check one part as it arrives; raises PayloadError (the part is quarantined with that reason)."""
        ...

    def decode_entries(self, payload: bytes) -> list[BatchEntry]:
        """A part checked by decode_part -> its readings as entries, in order; raises PayloadError."""
        ...

    def decode_named(self, device_id: str, entry: NamedEntry, received_at: float) -> Reading:
        """A named reading as the reading of configured device `device_id`; raises PayloadError."""
        ...


class AdvertDecoder(Protocol):
    """The BLE decoders (drivers/ble): a raw advertisement of a MAC -> the reading of its configured device."""

    def decode_raw(self, mac: str, adv: bytes, received_at: float) -> Reading | None:
        """None: no device is configured with this MAC, or it is, and this advertisement is nothing new (a
        repeat, heard directly or through another hub, or within the device's minimum interval). Raises
        PayloadError for an advertisement it cannot accept (malformed, a replayed counter): that reading is
        quarantined with the reason."""
        ...

    def configured_device(self, mac: str) -> str | None:
        """The id of the device configured with this MAC, None for any other (tells a repeat from an unmapped
        advertiser)."""
        ...
