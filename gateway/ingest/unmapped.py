"""Logical devices a hub speaks for that map to no configured device: counted and listed, per hub.

What an installer needs to add them to the config: the name or MAC, how often and when it was heard, why it
is not mapped, and one sample of what the hub sent. Bounded: at most `max_listed` per hub are listed (the
first ones heard); the rest are counted. Kept in memory: the list starts empty after a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SAMPLE_CHARS = 256


@dataclass(slots=True)
class _Unmapped:
    by: str  # "device" | "mac"
    name: str
    reason: str
    first_seen: float
    last_seen: float
    sample: str
    count: int = 0


@dataclass(slots=True)
class _HubList:
    listed: dict[tuple[str, str], _Unmapped] = field(default_factory=dict)
    readings: int = 0  # unmapped readings, listed or not
    not_listed: int = 0  # readings of devices beyond the list's bound


class UnmappedDevices:
    def __init__(self, max_listed: int) -> None:
        self.max_listed = max_listed
        self._hubs: dict[str, _HubList] = {}

    def note(self, hub_id: str, by: str, name: str, reason: str, at: float, sample: Any) -> None:
        """A reading of an unmapped device; `sample`: what the hub sent (JSON), kept for a device listed anew."""
        hub = self._hubs.get(hub_id)
        if hub is None:
            hub = self._hubs[hub_id] = _HubList()
        hub.readings += 1
        entry = hub.listed.get((by, name))
        if entry is None:
            if len(hub.listed) >= self.max_listed:
                hub.not_listed += 1
                return
            text = json.dumps(sample, separators=(",", ":"), ensure_ascii=False)[:SAMPLE_CHARS]
            entry = hub.listed[(by, name)] = _Unmapped(by, name, reason, at, at, text)
        entry.count += 1
        entry.last_seen = max(entry.last_seen, at)
        entry.reason = reason

    def view(self, hub_id: str) -> dict[str, Any]:
        """`{"hub", "readings", "notListed", "devices": [{"by", "name", "count", "firstSeen", "lastSeen",
        "reason", "sample"}]}`, the most heard first."""
        hub = self._hubs.get(hub_id) or _HubList()
        devices = sorted(hub.listed.values(), key=lambda e: (-e.count, e.by, e.name))
        return {
            "hub": hub_id,
            "readings": hub.readings,
            "notListed": hub.not_listed,
            "devices": [{"by": e.by, "name": e.name, "count": e.count, "firstSeen": e.first_seen,
                         "lastSeen": e.last_seen, "reason": e.reason, "sample": e.sample} for e in devices],
        }
