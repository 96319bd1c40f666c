"""Ingest: what devices send through the LAN broker becomes readings, status and quarantine rows.

Runs on the broker's per-client path (see BrokerSink): it parses in place and hands records to the
store writer, awaiting it only when the writer's queue is full. It never raises into the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from gateway.core.clock import Clock
from gateway.core.errors import PayloadError, StoreClosedError
from gateway.core.metrics import Metrics
from gateway.core.models import DeviceState, MetricValue, Quarantined, StatusChange, StoreRecord
from gateway.core.ports import ReadingDecoder
from gateway.ingest.payloads import decode_generic_reading, parse_object

log = structlog.get_logger(__name__)

AckHandler = Callable[[str, bytes, float], Awaitable[None]]
StatusListener = Callable[[str, bool], None]
ReadyListener = Callable[[str], None]
Put = Callable[[StoreRecord], Awaitable[None]]
Receipt = Callable[[], "asyncio.Future[None] | None"]  # done once everything put so far is stored

_STATUS_VALUES = {b"online": True, b'"online"': True, b"offline": False, b'"offline"': False}


class Ingest:
    def __init__(
        self,
        *,
        put: Put,
        receipt: Receipt,
        metrics: Metrics,
        clock: Clock,
        device_kinds: Mapping[str, str],
        decoders: Mapping[str, ReadingDecoder],
    ) -> None:
        self._put = put
        self._receipt = receipt
        self._metrics = metrics
        self._clock = clock
        self._kinds = dict(device_kinds)
        self._decoders = dict(decoders)
        self.states: dict[str, DeviceState] = {}
        self.ack_handler: AckHandler | None = None  # the command executor registers itself here
        # Told of every online/offline transition (the reconciler re-drives a device that comes back).
        self.status_listeners: list[StatusListener] = []
        # Told when a device's subscription to its command topic is in place (it can take commands).
        self.command_ready_listeners: list[ReadyListener] = []

    def set_devices(self, device_kinds: Mapping[str, str]) -> None:
        """Swap the device table (config reload): one assignment, so readers never see half of it."""
        self._kinds = dict(device_kinds)

    def restore_states(self, states: Mapping[str, DeviceState]) -> None:
        self.states = dict(states)

    def reported(self, device_id: str) -> Mapping[str, MetricValue] | None:
        """What the device last said about itself (its latest reading's metrics, acked state laid over)."""
        st = self.states.get(device_id)
        return st.last_metrics if st is not None else None

    def merge_reported(self, device_id: str, state: Mapping[str, Any], at: float) -> dict[str, Any]:
        """An ack reported the device's state: it updates the device state (until the next reading)."""
        st = self.state(device_id)
        merged: dict[str, MetricValue] = dict(st.last_metrics)
        for key in ("fanSpeed", "powerOn"):
            value = state.get(key)
            if isinstance(value, bool | int):
                merged[key] = value
        st.last_metrics = merged
        return dict(merged)

    def state(self, device_id: str) -> DeviceState:
        st = self.states.get(device_id)
        if st is None:
            st = self.states[device_id] = DeviceState(device_id)
        return st

    # --- BrokerSink -------------------------------------------------------------------------------

    async def message(self, client_id: str, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        now = self._clock.now()
        try:
            await self._route(client_id, topic, payload, now)
        except StoreClosedError as exc:
            self._metrics.inc("gateway_ingest_rejected_closed_total", 1, "messages refused during shutdown")
            if self._metrics.value("gateway_ingest_rejected_closed_total") == 1:  # once, not per message
                log.warning("ingest.store_closed", client_id=client_id, topic=topic)
            refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            refused.set_exception(exc)  # not stored: the device must keep it and send it again
            return refused
        except Exception:
            # A bug here must not kill the client's broker loop; it is logged with its traceback and counted.
            # The message is still acknowledged (once what came before it is stored): sent again, it would
            # meet the same bug and hold up the device for good.
            self._metrics.inc("gateway_ingest_errors_total", 1, "unexpected errors in ingest")
            log.exception("ingest.error", client_id=client_id, topic=topic)
        # Whatever this message produced is queued now; the receipt also covers what came before it, which
        # keeps acknowledgements in arrival order.
        return self._receipt()

    async def connection(self, client_id: str, connected: bool) -> None:
        if client_id not in self._kinds:
            return
        now = self._clock.now()
        st = self.state(client_id)
        if connected:
            st.last_seen = now
        try:
            await self._status(st, connected, now, "connected" if connected else "disconnected")
        except StoreClosedError:
            log.info("ingest.status_after_close", device_id=client_id, online=connected)

    async def subscribed(self, client_id: str, topic_filter: str) -> None:
        if client_id not in self._kinds or not _matches_filter(f"device/{client_id}/command", topic_filter):
            return
        for listener in self.command_ready_listeners:
            listener(client_id)

    # --- routing ----------------------------------------------------------------------------------

    async def _route(self, client_id: str, topic: str, payload: bytes, now: float) -> None:
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "device":
            await self._quarantine(client_id, None, topic, payload, "topic is not device/{id}/{channel}", now)
            return
        device_id, channel = parts[1], parts[2]
        kind = self._kinds.get(device_id)
        if kind is None:
            await self._quarantine(client_id, device_id, topic, payload, f"unknown device {device_id!r}", now)
            return
        self._metrics.inc("gateway_ingest_messages_total", 1, "messages received from devices", channel=channel)
        st = self.state(device_id)
        st.last_seen = now
        if channel == "data":
            await self._data(client_id, device_id, kind, topic, payload, now, st)
        elif channel == "status":
            online = _STATUS_VALUES.get(payload.strip())
            if online is None:
                reason = 'status must be "online" or "offline"'
                await self._quarantine(client_id, device_id, topic, payload, reason, now)
                return
            await self._status(st, online, now, "status")
        elif channel == "ack":
            if self.ack_handler is None:
                await self._quarantine(client_id, device_id, topic, payload, "no command service to take acks", now)
                return
            try:
                await self.ack_handler(device_id, payload, now)
            except PayloadError as exc:
                await self._quarantine(client_id, device_id, topic, payload, str(exc), now)
        elif channel == "batch":
            # Hub batches (CONTRACT section 3) are reassembled by the demultiplexer, which is not built yet:
            # keep them visible instead of dropping them.
            await self._quarantine(client_id, device_id, topic, payload, "hub batches are not supported yet", now)
        else:
            await self._quarantine(client_id, device_id, topic, payload, f"unknown channel {channel!r}", now)

    async def _data(
        self, client_id: str, device_id: str, kind: str, topic: str, payload: bytes, now: float, st: DeviceState
    ) -> None:
        try:
            obj = parse_object(payload)
            decoder = decode_generic_reading if "metrics" in obj else self._decoders[kind]
            reading = decoder(device_id, obj, now)
        except PayloadError as exc:
            await self._quarantine(client_id, device_id, topic, payload, str(exc), now)
            return
        if st.last_ts is None or reading.ts >= st.last_ts:
            st.last_ts = reading.ts
            st.last_metrics = reading.metrics
        await self._put(reading)

    async def _status(self, st: DeviceState, online: bool, now: float, reason: str) -> None:
        if st.online == online and st.status_changed_at is not None:
            return  # no transition: no event
        st.online = online
        st.status_changed_at = now
        log.info("device.online" if online else "device.offline", device_id=st.device_id, reason=reason)
        await self._put(StatusChange(st.device_id, online, now, reason))
        for listener in self.status_listeners:
            listener(st.device_id, online)

    async def _quarantine(
        self, client_id: str | None, device_id: str | None, topic: str, payload: bytes, reason: str, now: float
    ) -> None:
        self._metrics.inc("gateway_quarantined_total", 1, "payloads refused and kept with their reason")
        log.warning("ingest.quarantined", client_id=client_id, topic=topic, reason=reason, size=len(payload))
        await self._put(Quarantined(now, client_id, topic, bytes(payload), reason, device_id))


def _matches_filter(topic: str, topic_filter: str) -> bool:
    """MQTT filter matching (+ one level, # the rest), for the few filters a device subscribes to."""
    parts, pattern = topic.split("/"), topic_filter.split("/")
    for i, p in enumerate(pattern):
        if p == "#":
            return True
        if i >= len(parts) or (p != "+" and p != parts[i]):
            return False
    return len(parts) == len(pattern)
