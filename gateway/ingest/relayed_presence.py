"""Presence of the logical devices hubs relay: online when a batch brings something of theirs, offline after a
silence. No I/O: the hub intake turns what this says into presence (DeviceIntake.presence: the registry, the
device.online/offline events).

A relayed device has no connection of its own to open or close, so its presence is its silence, measured on
the injected clock as the BLE scanner measures its own devices': a device is heard when a hub batch carries a
reading of it (or, for a configured BLE advertiser, a repeat of its advertisement); it goes offline once
nothing was heard of it for `offline_after` seconds, through a hub or any other link (the registry's last
seen, so a device that the gateway's own radio also hears is not sent offline by a hub that lost it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class RelayedPresence:
    def __init__(self, offline_after: float, last_seen: Callable[[str], float | None]) -> None:
        self.offline_after = offline_after
        self._last_seen = last_seen  # the registry's: when any link last heard the device
        self._heard: dict[str, float] = {}  # device id -> when a hub last relayed it (online through a hub)

    def heard(self, devices: Iterable[str], at: float) -> list[str]:
        """Hubs relayed these devices at `at`; returns the ones that were not online through a hub."""
        heard, new = self._heard, []
        for device_id in devices:
            if device_id not in heard:
                new.append(device_id)
                heard[device_id] = at
            elif heard[device_id] < at:
                heard[device_id] = at
        return new

    def silent(self, now: float) -> list[str]:
        """The devices nothing was heard of for `offline_after` seconds (no longer tracked: offline)."""
        quiet = []
        for device_id, at in list(self._heard.items()):
            if now - at < self.offline_after:
                continue
            seen = self._last_seen(device_id)
            if seen is not None and now - seen < self.offline_after:
                self._heard[device_id] = seen  # another link heard it since
                continue
            del self._heard[device_id]
            quiet.append(device_id)
        return quiet

    def next_deadline(self) -> float | None:
        """When the quietest device goes offline unless it is heard before (None: none is tracked)."""
        if not self._heard:
            return None
        return min(self._heard.values()) + self.offline_after

    def online(self) -> list[str]:
        return list(self._heard)
