"""Hub batches on `device/{hubId}/batch` (CONTRACT section 3): reassembled, then stored in one transaction.

MqttIntake hands every part here (:meth:`HubIntake.part`) on the hub's connection. The demultiplexer
(demux.py) decides; this service stores what it decided, so the broker's PUBACK (sent once what a message
produced is committed) follows:

* a part that leaves its batch incomplete is **stored** in SQLite (`hub_parts`) before its PUBACK, and only
  its number and size stay in memory (the demultiplexer's state), so the per-hub byte limit bounds the disk,
  not the gateway's RAM. Holding
  PUBACKs until the batch completes would stall a hub: a batch of 67 parts does not fit a QoS 1 in-flight
  window (paho's default is 20), so the hub could never send the parts the batch waits for. Stored parts
  also survive a restart: the batch resumes where it was (a part whose PUBACK the crash cut off is sent
  again by the hub and counts as a duplicate);
* the part that completes the batch is acknowledged once the whole batch is committed: its held parts are
  read back from SQLite (store record HubPartsWanted, answered by the writer after every part put before it
  is committed), then its readings, the readings quarantined on their own, the removal of its held parts,
  all in ONE transaction (store record HubBatchClosed);
* a batch given up (its timeout on the injected clock, or a per-hub limit) is quarantined with every part
  that arrived, each part whole in a row of its own (so the batch can be replayed), also in one transaction.

The logical devices a batch brings news of go online (reason "relayed"), and offline after
`offline_after` seconds of silence (relayed_presence.py), with the device.online/offline events.

The timer (:meth:`run`) gives up batches at their deadline and sends silent devices offline; tests move a
ManualClock and call :meth:`wake`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import structlog

from gateway.core import topics
from gateway.core.clock import Clock
from gateway.core.errors import PayloadError, StoreClosedError
from gateway.core.hub_batches import AdvertDecoder, HubDriver
from gateway.core.metrics import Metrics
from gateway.core.models import HubBatchClosed, HubPartHeld, HubPartsWanted, Quarantined, StoredPart, StoreRecord
from gateway.ingest.demux import Demux, DemuxLimits, OpenBatch, Verdict
from gateway.ingest.hub_readings import BatchResolver, HubMap, Resolved
from gateway.ingest.relayed_presence import RelayedPresence
from gateway.ingest.service import Ingest
from gateway.ingest.unmapped import UnmappedDevices

log = structlog.get_logger(__name__)

MAX_SLEEP_S = 60.0  # the timer looks again at least this often (a stepped wall clock)
MISSING_LISTED = 20  # missing part numbers named in a quarantine reason
PARTS_PER_TURN = 8  # parts of a complete batch resolved before other tasks get a turn (~240 readings)

Put = Callable[[StoreRecord], Awaitable[None]]
HeldRow = tuple[str, str, int, int, int, float]  # hub, batch, part, parts, size in bytes, received_at
ClosedRow = tuple[str, str, float, bool]  # hub, batch, closed at, complete


class HubIntake:
    def __init__(
        self,
        *,
        limits: DemuxLimits,
        maps: dict[str, HubMap],
        ingest: Ingest,
        put: Put,
        driver_of: Callable[[str], HubDriver | None],
        configured: Callable[[str], bool],
        decoder: AdvertDecoder | None,
        clock: Clock,
        metrics: Metrics,
        last_seen: Callable[[str], float | None],
        offline_after: float = 300.0,
        max_unmapped_listed: int = 256,
    ) -> None:
        self._demux = Demux(limits)
        self._maps = maps  # hub id -> its logical devices
        self._ingest = ingest
        self._put = put
        self._driver_of = driver_of  # the hub driver of a configured hub (None: not a hub)
        self._clock = clock
        self._metrics = metrics
        self.unmapped = UnmappedDevices(max_unmapped_listed)
        self._resolver = BatchResolver(decoder=decoder, admit=ingest.admit, configured=configured,
                                       unmapped=self.unmapped)
        self.presence = RelayedPresence(offline_after, last_seen)
        self._wake = asyncio.Event()
        self._sleeping_until: float | None = None  # when the timer looks next (None: not asleep)
        metrics.gauge_callback("gateway_hub_bytes_held", self._demux.held_bytes,
                                "bytes of hub batch parts held in SQLite for open batches")

    @property
    def demux(self) -> Demux:
        return self._demux

    def set_decoder(self, decoder: AdvertDecoder | None) -> None:
        """The BLE decoders for relayed advertisements (None: they count as unmapped)."""
        self._resolver.decoder = decoder

    def set_maps(self, maps: dict[str, HubMap]) -> None:
        """Config reload: the hubs' mappings (batches closing from now on use them)."""
        self._maps = maps

    def restore(self, parts: Iterable[HeldRow], closed: Iterable[ClosedRow]) -> None:
        """Start-up: the parts of the batches open at the last stop, and the batches closed lately (the store's
        hub_parts and hub_batches_closed rows)."""
        held = 0
        for hub_id, batch_id, part, count, size, received_at in parts:
            self._demux.restore(hub_id, batch_id, part, count, size, received_at)
            held += 1
        for hub_id, batch_id, closed_at, complete in closed:
            self._demux.remember(hub_id, batch_id, closed_at, complete)
        if held:
            log.info("hubs.restored", parts=held, held_bytes=self._demux.held_bytes())

    # --- parts ------------------------------------------------------------------------------------

    async def part(self, client_id: str, hub_id: str, topic: str, payload: bytes, now: float) -> None:
        """One part from a hub; raises PayloadError when this part alone is to be quarantined."""
        driver = self._driver_of(hub_id)
        if driver is None:
            raise PayloadError(f"{hub_id!r} is not a hub: only a device of kind 'hub' sends batches")
        header = driver.decode_part(payload)
        await self._expire(now)
        offer = self._demux.offer(hub_id, header, len(payload), now)
        self._metrics.inc("gateway_hub_parts_total", 1, "hub batch parts received", verdict=offer.verdict.value)
        this_part: StoredPart = (header.part, payload, now)
        for batch, reason in offer.evicted:
            # A batch given up with this part (it would hold too much) is quarantined with it.
            with_it = offer.verdict is Verdict.REFUSED and batch.batch_id == header.batch_id
            await self._give_up(batch, reason, now, "evicted", this_part if with_it else None)
            if with_it:
                return
        if offer.verdict is Verdict.HELD:
            await self._put(HubPartHeld(hub_id, header.batch_id, header.part, header.parts, now, payload))
            self._wake_before(now + self._demux.limits.timeout)  # this batch's deadline
        elif offer.verdict is Verdict.COMPLETE:
            assert offer.batch is not None
            try:
                heard = await self._complete(offer.batch, this_part, driver, topic, now)
            except (PayloadError, StoreClosedError):
                raise
            except Exception as exc:
                # A bug while applying it: the batch is closed already, so it is kept the way a batch given up
                # is (its parts quarantined, the reason saying why) rather than left in hub_parts.
                log.exception("hubs.batch_failed", hub_id=hub_id, batch_id=header.batch_id)
                await self._give_up(offer.batch, f"could not be applied: internal error: {type(exc).__name__}: "
                                    f"{exc}"[:300], now, "error", this_part)
            else:
                for device_id in self.presence.heard(heard, now):
                    await self._ingest.presence(device_id, True, "relayed")
                self._wake_before(now + self.presence.offline_after)  # the silence deadline of these devices
        elif offer.late:  # kept whole with the rest of its batch's parts, for a replay
            await self._ingest.quarantine(device_id=hub_id, source=client_id, topic=topic, payload=payload,
                                          reason=offer.reason, whole=True)
        elif offer.verdict is Verdict.REFUSED:
            raise PayloadError(offer.reason)
        # DUPLICATE: nothing new. The receipt the broker waits for covers the first copy's row too.

    async def _stored_parts(self, batch: OpenBatch, also: StoredPart | None) -> list[StoredPart]:
        """The batch's parts held in SQLite, read back once every part put before is committed, with `also` (a
        part that arrived just now), in part order."""
        reply: asyncio.Future[list[StoredPart]] = asyncio.get_running_loop().create_future()
        await self._put(HubPartsWanted(batch.hub_id, batch.batch_id, reply))
        receipt = self._ingest.receipt()
        if receipt is not None:
            await asyncio.shield(receipt)  # StoreClosedError when the store closes first
        parts = await reply
        if also is not None:
            parts = sorted([*(p for p in parts if p[0] != also[0]), also])
        return parts

    async def _complete(self, batch: OpenBatch, last: StoredPart, driver: HubDriver, topic: str,
                        now: float) -> Iterable[str]:
        """Store the complete batch; returns the configured devices it brought news of."""
        parts = await self._stored_parts(batch, last)
        if len(parts) != batch.parts:  # a held part the store refused: never apply a batch with a hole in it
            await self._give_up(batch, "lost a part held in the store", now, "error", last, parts)
            return ()
        hub_map = self._maps.get(batch.hub_id) or HubMap()
        resolved = Resolved()
        for n, (number, payload, at) in enumerate(parts, 1):
            self._resolver.resolve_part(resolved, batch, number, payload, at, driver, hub_map, topic)
            if n % PARTS_PER_TURN == 0:
                await asyncio.sleep(0)  # a 2,000-reading batch takes tens of ms: let the other devices in between
        self._metrics.inc("gateway_hub_batches_total", 1, "hub batches closed", outcome="complete")
        await self._ingest.accept_batch(HubBatchClosed(
            batch.hub_id, batch.batch_id, now, True, tuple(resolved.readings), tuple(resolved.quarantined),
            now - self._demux.limits.timeout,
        ))
        return resolved.heard

    async def _give_up(self, batch: OpenBatch, reason: str, now: float, outcome: str, also: StoredPart | None = None,
                       parts: list[StoredPart] | None = None) -> None:
        """Quarantine every part of the batch that arrived (`parts`: read back already), each whole in a row of
        its own, with the reason and what is missing."""
        if parts is None:
            parts = await self._stored_parts(batch, also)
        arrived = {number for number, _, _ in parts}
        missing = [n for n in range(1, batch.parts + 1) if n not in arrived]
        listed = ", ".join(map(str, missing[:MISSING_LISTED])) + (", ..." if len(missing) > MISSING_LISTED else "")
        why = (f"batch {batch.batch_id!r} {reason}: {len(parts)} of {batch.parts} parts arrived "
               f"(missing: {listed})")
        topic = topics.device_topic(batch.hub_id, topics.BATCH)
        quarantined = tuple(Quarantined(at, batch.hub_id, topic, payload, why, batch.hub_id, whole=True)
                            for _, payload, at in parts)
        self._metrics.inc("gateway_hub_batches_total", 1, "hub batches closed", outcome=outcome)
        log.warning("hubs.batch_given_up", hub_id=batch.hub_id, batch_id=batch.batch_id, reason=reason,
                    arrived=len(parts), parts=batch.parts)
        await self._ingest.accept_batch(HubBatchClosed(
            batch.hub_id, batch.batch_id, now, False, (), quarantined, now - self._demux.limits.timeout,
        ))

    # --- time -------------------------------------------------------------------------------------

    async def _expire(self, now: float) -> None:
        deadline = self._demux.next_deadline()
        if deadline is None or deadline > now:
            return
        reason = f"incomplete {self._demux.limits.timeout:g} s after its first part"
        for batch in self._demux.expire(now):
            await self._give_up(batch, reason, now, "timeout")

    async def _silence(self, now: float) -> None:
        deadline = self.presence.next_deadline()
        if deadline is None or deadline > now:
            return
        for device_id in self.presence.silent(now):
            await self._ingest.presence(device_id, False, "silent")

    def _next_deadline(self) -> float | None:
        deadlines = [d for d in (self._demux.next_deadline(), self.presence.next_deadline()) if d is not None]
        return min(deadlines, default=None)

    def wake(self) -> None:
        """Look at the deadlines now (the clock moved, or a deadline came up before the timer's next look)."""
        self._wake.set()

    def _wake_before(self, deadline: float) -> None:
        if self._sleeping_until is not None and deadline < self._sleeping_until:
            self.wake()  # the timer sleeps past this deadline

    async def run(self) -> None:
        """The timer: gives up each batch at its deadline, sends silent relayed devices offline. Cancelled at
        shutdown before the store closes (a batch given up but not stored by then is still in hub_parts: it is
        given up again after the restart)."""
        while True:
            now = self._clock.now()
            try:
                await self._expire(now)
                await self._silence(now)
            except StoreClosedError:
                return
            deadline = self._next_deadline()
            delay = MAX_SLEEP_S if deadline is None else min(MAX_SLEEP_S, max(0.0, deadline - now))
            self._wake.clear()
            self._sleeping_until = now + delay
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            finally:
                self._sleeping_until = None

    def view_unmapped(self, hub_id: str) -> dict[str, Any] | None:
        """GET /api/hubs/{id}/unmapped (None: not a configured hub)."""
        if self._driver_of(hub_id) is None:
            return None
        return self.unmapped.view(hub_id)
