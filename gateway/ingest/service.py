"""Ingest: the one entry through which every device link hands over what its devices said.

Readings, presence, acknowledgements and refused payloads arrive here already decoded by the device's
driver (`gateway.core.links.DeviceIntake`); ingest updates the device registry, hands records to the store
writer (awaiting it only when the writer's queue is full) and passes acknowledgements to the command
service. It never raises into a link except StoreClosedError, which means "not stored".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from gateway.core.clock import Clock
from gateway.core.device_commands import Ack
from gateway.core.errors import PayloadError
from gateway.core.metrics import Metrics
from gateway.core.models import HubBatchClosed, Quarantined, Reading, StatusChange, StoreRecord
from gateway.core.registry import DeviceRegistry
from gateway.core.throttle import LogThrottle
from gateway.ingest.quarantine_reasons import reason_class
from gateway.ingest.resends import RecentReadings

log = structlog.get_logger(__name__)

EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC).timestamp()

AckHandler = Callable[[str, Ack, float], Awaitable[None]]
Put = Callable[[StoreRecord], Awaitable[None]]
Receipt = Callable[[], "asyncio.Future[None] | None"]  # done once everything put so far is stored


class Ingest:
    def __init__(
        self,
        *,
        put: Put,
        receipt: Receipt,
        metrics: Metrics,
        clock: Clock,
        registry: DeviceRegistry,
        earliest_ts: float = EARLIEST_TS,
        max_future_s: float = 600.0,
    ) -> None:
        self._earliest_ts = earliest_ts
        self._max_future_s = max_future_s
        self._put = put
        self.receipt = receipt
        self._metrics = metrics
        self._clock = clock
        self._registry = registry
        self._ack_handlers: list[AckHandler] = []
        self._log_throttle = LogThrottle()  # a faulty device (or a fuzzer) must not write a line per payload
        self.recent = RecentReadings()  # resends of readings already taken (resends.py); restored at start

    def subscribe_acks(self, handler: AckHandler) -> None:
        """The command service takes acknowledgements from here (called from its constructor)."""
        self._ack_handlers.append(handler)

    # --- DeviceIntake -----------------------------------------------------------------------------

    def seen(self, device_id: str, at: float) -> None:
        self._registry.seen(device_id, at)

    async def accept(self, reading: Reading) -> None:
        """Raises PayloadError (the link quarantines what it received) for a reading outside the time window."""
        self.admit(reading)
        recent, slot = self.recent, (reading.device_id, reading.ts)
        while True:
            key = recent.new_content(reading)
            if key is None:
                # Taken before (its PUBACK was lost): acknowledged with what is queued now, not stored again.
                self._metrics.inc("gateway_ingest_resends_total", 1, "readings a device sent again, not stored twice")
                return
            other = recent.other_copy_queueing(slot)
            if other is None:
                break
            await asyncio.shield(other)  # a copy from another connection waits for room: queued, or cut short?
        recent.queueing(slot)
        try:
            self._registry.reading(reading)
            await self._put(reading)
            recent.remember(reading, key)
        finally:
            recent.queued(slot)

    def admit(self, reading: Reading) -> None:
        """The checks every reading must pass (its time window); raises PayloadError with the reason."""
        ts = reading.ts
        if ts < self._earliest_ts:
            raise PayloadError(f"ts: {_iso(ts)} is before {_iso(self._earliest_ts)}")
        if ts > reading.received_at + self._max_future_s:
            ahead = (ts - reading.received_at) / 60.0
            raise PayloadError(f"ts: {_iso(ts)} is {ahead:.4g} minutes ahead of the gateway's clock "
                               f"(at most {self._max_future_s / 60.0:g})")

    async def accept_batch(self, batch: HubBatchClosed) -> None:
        """A hub batch closed (its readings already admitted): stored in one transaction. Each logical device
        is seen when its reading arrived, and its reading becomes the latest unless an older one came late."""
        registry = self._registry
        for reading in batch.readings:
            registry.seen(reading.device_id, reading.received_at)
            registry.reading(reading)
        if batch.quarantined:
            self._metrics.inc("gateway_quarantined_total", len(batch.quarantined),
                              "payloads refused and kept with their reason")
            first = batch.quarantined[0]
            log.warning("ingest.quarantined", client_id=first.client_id, topic=first.topic, reason=first.reason,
                        count=len(batch.quarantined))
        await self._put(batch)

    async def presence(self, device_id: str, online: bool, reason: str) -> None:
        now = self._clock.now()
        if not self._registry.set_online(device_id, online, now):
            return  # no transition: no event
        log.info("device.online" if online else "device.offline", device_id=device_id, reason=reason)
        await self._put(StatusChange(device_id, online, now, reason))

    async def acknowledged(self, device_id: str, ack: Ack) -> None:
        now = self._clock.now()
        for handler in self._ack_handlers:
            await handler(device_id, ack, now)

    def command_ready(self, device_id: str) -> None:
        self._registry.command_ready(device_id)

    async def quarantine(
        self, *, device_id: str | None, source: str | None, topic: str, payload: bytes, reason: str,
        whole: bool = False,
    ) -> None:
        """`whole`: keep all of the payload, not its first 4 KiB (a part of a hub batch given up)."""
        self._metrics.inc("gateway_quarantined_total", 1, "payloads refused and kept, by kind of reason",
                          reason=reason_class(reason))
        left_out = self._log_throttle.allow("quarantined")  # each one is in the quarantine table, with its reason
        if left_out is not None:
            log.warning("ingest.quarantined", client_id=source, topic=topic, reason=reason, size=len(payload),
                        left_out_since_last=left_out)
        await self._put(Quarantined(self._clock.now(), source, topic, bytes(payload), reason, device_id, whole))


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):
        return f"{ts:g} s"
