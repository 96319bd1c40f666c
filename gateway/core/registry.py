"""The device registry: the one owner of what the gateway knows about each device right now.

Configured devices (id -> kind), and per device: online, last seen, the latest reading's metrics with acked
state laid over them (the *reported* state), whether it can take commands now, and the effective *desired*
state control computed. Ingest, every device link and control change it through its methods; the uplink,
the API (and the panel's live feed, local rules) read it and subscribe to its change events. Persistence
is not its job: the records that ingest and control hand to the store carry the same facts.

Everything runs on the event loop: methods mutate synchronously and call listeners in subscription order.
A listener must not block; one that raises is logged and the others still run. The per-reading path costs
a dict lookup and two attribute writes unless someone listens for readings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import structlog

from gateway.core.models import DeviceState, MetricValue, Reading

log = structlog.get_logger(__name__)

# The keys of a device's state that an acknowledgement may report (domain vocabulary, see device_commands).
REPORTED_KEYS = ("fanSpeed", "powerOn")


class Change(Enum):
    PRESENCE = "presence"  # online <-> offline
    READY = "ready"  # subscribed to its commands (or its link says it can take them)
    READING = "reading"  # a newer reading replaced the latest metrics
    REPORTED = "reported"  # an acknowledgement reported the device's state
    DESIRED = "desired"  # control's effective desired state changed
    DEVICES = "devices"  # the configured device list changed (reload)


@dataclass(frozen=True, slots=True)
class DeviceChange:
    device_id: str | None  # None for Change.DEVICES
    change: Change
    state: DeviceState | None


Listener = Callable[[DeviceChange], None]


class DeviceRegistry:
    def __init__(self, kinds: Mapping[str, str]) -> None:
        self._kinds = dict(kinds)
        self._states: dict[str, DeviceState] = {}
        self._desired: dict[str, dict[str, Any]] = {}
        self._listeners: dict[Change, list[Listener]] = {change: [] for change in Change}

    # --- configuration ----------------------------------------------------------------------------

    def kind(self, device_id: str) -> str | None:
        """The configured kind of a device, None for one not in the config."""
        return self._kinds.get(device_id)

    def configured(self) -> list[str]:
        return list(self._kinds)

    def set_devices(self, kinds: Mapping[str, str]) -> None:
        """Swap the device table (config reload) in one assignment; state of removed devices is kept."""
        self._kinds = dict(kinds)
        self._emit(DeviceChange(None, Change.DEVICES, None))

    def restore(self, states: Iterable[DeviceState]) -> None:
        """The states stored at the last run (start-up, before any link runs)."""
        self._states = {st.device_id: st for st in states}

    # --- changes ----------------------------------------------------------------------------------

    def listeners(self, change: Change) -> int:
        """How many listeners `change` has (live views subscribe once, whatever the number of open pages)."""
        return len(self._listeners[change])

    def subscribe(self, listener: Listener, *changes: Change) -> Callable[[], None]:
        """Call `listener` on each of `changes` (all kinds when none given); returns the unsubscribe."""
        chosen = changes or tuple(Change)
        for change in chosen:
            self._listeners[change].append(listener)

        def unsubscribe() -> None:
            for change in chosen:
                if listener in self._listeners[change]:
                    self._listeners[change].remove(listener)

        return unsubscribe

    def state(self, device_id: str) -> DeviceState:
        """The device's state, created empty on first use."""
        st = self._states.get(device_id)
        if st is None:
            st = self._states[device_id] = DeviceState(device_id)
        return st

    def get(self, device_id: str) -> DeviceState | None:
        return self._states.get(device_id)

    def seen(self, device_id: str, at: float) -> DeviceState:
        st = self.state(device_id)
        st.last_seen = at
        return st

    def reading(self, reading: Reading) -> bool:
        """A reading was accepted: it becomes the latest unless an older one arrived late. True if it did."""
        st = self.state(reading.device_id)
        if st.last_ts is not None and reading.ts < st.last_ts:
            return False
        st.last_ts = reading.ts
        st.last_metrics = reading.metrics
        if self._listeners[Change.READING]:
            self._emit(DeviceChange(reading.device_id, Change.READING, st))
        return True

    def set_online(self, device_id: str, online: bool, at: float) -> bool:
        """Record a presence; True when it is a transition (or the first one known)."""
        st = self.state(device_id)
        if st.online == online and st.status_changed_at is not None:
            return False
        st.online = online
        st.status_changed_at = at
        self._emit(DeviceChange(device_id, Change.PRESENCE, st))
        return True

    def mark_all_offline(self, at: float) -> list[str]:
        """Start-up: whoever was connected before a restart or crash is not connected now."""
        gone = [st.device_id for st in self._states.values() if st.online]
        for device_id in gone:
            self.set_online(device_id, False, at)
        return gone

    def command_ready(self, device_id: str) -> None:
        """The device's link can deliver commands to it from now on (MQTT: its subscription is in place)."""
        self._emit(DeviceChange(device_id, Change.READY, self.state(device_id)))

    def report(self, device_id: str, state: Mapping[str, Any]) -> dict[str, MetricValue]:
        """An acknowledgement reported the device's state: laid over its latest metrics until the next
        reading. Returns the merged metrics (what the store keeps as the device's last metrics)."""
        st = self.state(device_id)
        merged: dict[str, MetricValue] = dict(st.last_metrics)
        for key in REPORTED_KEYS:
            value = state.get(key)
            if isinstance(value, bool | int):
                merged[key] = value
        st.last_metrics = merged
        self._emit(DeviceChange(device_id, Change.REPORTED, st))
        return dict(merged)

    def reported(self, device_id: str) -> Mapping[str, MetricValue] | None:
        """What the device last said about itself (latest reading's metrics, acked state laid over)."""
        st = self._states.get(device_id)
        return st.last_metrics if st is not None else None

    def set_desired(self, device_id: str, desired: Mapping[str, Any] | None) -> None:
        """Control's effective desired state of the device (None: no layer is active)."""
        if desired is None:
            if self._desired.pop(device_id, None) is None:
                return
        else:
            if self._desired.get(device_id) == desired:
                return
            self._desired[device_id] = dict(desired)
        self._emit(DeviceChange(device_id, Change.DESIRED, self._states.get(device_id)))

    def desired(self, device_id: str) -> dict[str, Any] | None:
        value = self._desired.get(device_id)
        return dict(value) if value is not None else None

    # --- views ------------------------------------------------------------------------------------

    def online_count(self) -> int:
        return sum(1 for device_id in self._kinds if (st := self._states.get(device_id)) and st.online)

    def summary(self) -> list[dict[str, Any]]:
        """`[{"id", "kind", "online", "lastSeen"}]` of the configured devices (CONTRACT section 2)."""
        out = []
        for device_id, kind in self._kinds.items():
            st = self._states.get(device_id)
            out.append({"id": device_id, "kind": kind, "online": bool(st and st.online),
                        "lastSeen": st.last_seen if st else None})
        return out

    def _emit(self, change: DeviceChange) -> None:
        for listener in tuple(self._listeners[change.change]):
            try:
                listener(change)
            except Exception:
                log.exception("registry.listener_failed", change=change.change.value, device_id=change.device_id)
