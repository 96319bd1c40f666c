"""What the panel shows of a device: one row per configured device, from the registry's state.

The same dict renders the overview's table on the server and travels in the live feed's events, so a
row drawn at first paint and one updated live say the same thing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from gateway.core.clock import Clock
from gateway.core.models import DeviceState
from gateway.core.registry import DeviceRegistry
from gateway.settings import DeviceSettings, Settings

# Readings the overview has a column for (CO2 only where the device reports it).
ROW_METRICS = ("pm25", "co2", "temperature", "humidity")


class UplinkView(Protocol):
    """What the gateway page reads of the cloud link (gateway.uplink.client.UplinkState)."""

    connected: bool
    last_error: str | None
    reconnects: int
    backlog: int
    oldest_unsent_age: float | None
    last_sync_at: float | None


@dataclass(frozen=True, slots=True)
class PanelSources:
    """What the panel reads of the running gateway (the composition root fills it in)."""

    registry: DeviceRegistry
    settings: Callable[[], Settings]  # the config in force: device names and rooms follow a reload
    health: Callable[[], dict[str, Any]]
    uplink: Callable[[], UplinkView | None]
    clients_connected: Callable[[], int]
    db_path: Path
    clock: Clock
    started_at: float
    takes_commands: Callable[[str], bool] = lambda device_id: True  # False: its driver takes none (a sensor)


def device_row(device: DeviceSettings, state: DeviceState | None, desired: dict[str, Any] | None) -> dict[str, Any]:
    metrics = dict(state.last_metrics) if state is not None else {}
    row: dict[str, Any] = {
        "id": device.id,
        "name": device.name or device.id,
        "room": device.room,
        "kind": device.kind,
        "online": bool(state and state.online),
        "lastSeen": state.last_seen if state else None,
        "ts": state.last_ts if state else None,
        "power": metrics.get("powerOn"),
        "fanSpeed": metrics.get("fanSpeed"),
        "metrics": metrics,
        "desired": desired,
    }
    for name in ROW_METRICS:
        row[name] = metrics.get(name)
    return row


def device_rows(sources: PanelSources) -> list[dict[str, Any]]:
    registry = sources.registry
    return [device_row(d, registry.get(d.id), registry.desired(d.id)) for d in sources.settings().devices]


def find_device(sources: PanelSources, device_id: str) -> DeviceSettings | None:
    return sources.settings().device(device_id)


class Formats:
    """Jinja filters: times in the gateway's zone (the page's script redraws them in the same zone)."""

    def __init__(self, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)

    def time(self, ts: float | None) -> str:
        if ts is None:
            return "never"
        return datetime.fromtimestamp(ts, self.zone).strftime("%Y-%m-%d %H:%M:%S")

    @staticmethod
    def number(value: object, digits: int = 1) -> str:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "–"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    @staticmethod
    def duration(seconds: float | None) -> str:
        if seconds is None:
            return "–"
        whole = int(seconds)
        days, rest = divmod(whole, 86_400)
        hours, rest = divmod(rest, 3600)
        minutes, secs = divmod(rest, 60)
        if days:
            return f"{days} d {hours} h"
        if hours:
            return f"{hours} h {minutes} min"
        return f"{minutes} min {secs} s" if minutes else f"{secs} s"

    @staticmethod
    def size(value: float | None) -> str:
        if value is None:
            return "–"
        for unit in ("B", "KiB", "MiB", "GiB"):
            if value < 1024 or unit == "GiB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
            value /= 1024
        return f"{value:.1f} GiB"
