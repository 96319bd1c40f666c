"""The demultiplexer's state machine: the parts of hub batches reassembled, with per-hub limits. No I/O.

Parts arrive in any order, some twice. :meth:`Demux.offer` says what to do with each one:

* ``HELD``: kept until the rest arrives (the caller stores it in SQLite, so a restart resumes the batch);
* ``COMPLETE``: it was the last missing part; the batch (its part numbers, each once) is handed back and closed;
* ``DUPLICATE``: already held, or its batch was completed a moment ago (a QoS 1 resend): nothing to do;
* ``REFUSED``: quarantine this part with the reason (its batch says otherwise, or was given up already).

A batch still open `timeout` seconds after its first part is given up by :meth:`Demux.expire`; the caller
quarantines the parts that did arrive. Time is whatever the caller passes (the injected clock).

Only what the state machine needs is in memory: batch ids, part numbers, byte counts, deadlines. The parts
themselves are the caller's to keep (in SQLite), so the byte limit bounds the disk, not the gateway's RAM.

**Limits per hub** (a bad or hostile hub cannot exhaust the gateway; every part it sent is stored or
quarantined, never dropped silently):
* at most `max_open` batches open: a part that opens one more gives up the hub's *oldest* open batch (an
  abandoned batch is the likeliest to be the oldest; the newest data keeps flowing);
* at most `max_bytes` of parts held: the oldest other batches are given up until the new part fits; a
  batch that alone would hold more is given up with the part;
* a batch declares at most `max_parts` parts (a part declaring more is refused).

A closed batch's id is remembered for `timeout` seconds (at most `max_remembered` per hub): a part of a
completed batch sent again then counts as a duplicate, a part of a batch given up is refused with the
reason. After that, the id opens a new batch: a hub must not reuse a batch id within the timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from gateway.core.hub_batches import BatchPart


class Verdict(Enum):
    HELD = "held"
    COMPLETE = "complete"
    DUPLICATE = "duplicate"
    REFUSED = "refused"


@dataclass(slots=True, frozen=True)
class DemuxLimits:
    timeout: float = 60.0
    max_open: int = 8
    max_bytes: int = 1024 * 1024
    max_parts: int = 1000
    max_remembered: int = 256


@dataclass(slots=True, eq=False)
class OpenBatch:
    hub_id: str
    batch_id: str
    parts: int
    opened_at: float
    deadline: float
    held: set[int] = field(default_factory=set)  # the numbers of the parts held (the parts are in SQLite)
    size: int = 0  # bytes of the parts held

    def missing(self) -> list[int]:
        return [n for n in range(1, self.parts + 1) if n not in self.held]


@dataclass(slots=True)
class Offer:
    verdict: Verdict
    batch: OpenBatch | None = None  # COMPLETE: the whole batch, no longer open
    reason: str = ""  # REFUSED: the quarantine reason
    late: bool = False  # REFUSED: a part of a batch given up (quarantined whole, as the batch's other parts were)
    evicted: list[tuple[OpenBatch, str]] = field(default_factory=list)  # given up to make room, with the reason


@dataclass(slots=True)
class _Hub:
    open: dict[str, OpenBatch] = field(default_factory=dict)  # by batch id, oldest first
    size: int = 0
    closed: dict[str, tuple[float, bool]] = field(default_factory=dict)  # batch id -> (closed at, complete)


class Demux:
    def __init__(self, limits: DemuxLimits) -> None:
        self.limits = limits
        self._hubs: dict[str, _Hub] = {}

    # --- parts ------------------------------------------------------------------------------------

    def offer(self, hub_id: str, header: BatchPart, size: int, now: float) -> Offer:
        """A part of `size` bytes has arrived."""
        hub = self._hubs.get(hub_id)
        if hub is None:
            hub = self._hubs[hub_id] = _Hub()
        batch_id, part, parts = header.batch_id, header.part, header.parts
        closed = hub.closed.get(batch_id)
        if closed is not None:
            if now - closed[0] < self.limits.timeout:
                if closed[1]:
                    return Offer(Verdict.DUPLICATE)
                return Offer(Verdict.REFUSED, reason=f"part {part} of batch {batch_id!r} arrived after the batch "
                                                     "was given up", late=True)
            del hub.closed[batch_id]  # long ago: the id starts a new batch
        batch = hub.open.get(batch_id)
        if batch is not None:
            if parts != batch.parts:
                return Offer(Verdict.REFUSED, reason=f"part {part} of batch {batch_id!r} says {parts} parts, its "
                                                     f"first part said {batch.parts}")
            if part in batch.held:
                return Offer(Verdict.DUPLICATE)
        elif parts > self.limits.max_parts:
            return Offer(Verdict.REFUSED, reason=f"batch {batch_id!r} has {parts} parts, more than the "
                                                 f"{self.limits.max_parts} a batch may have")
        if batch is None:
            batch = OpenBatch(hub_id, batch_id, parts, now, now + self.limits.timeout)
        if len(batch.held) + 1 < parts:
            return self._hold(hub, batch, part, size, now)
        self._close(hub, batch, now, complete=True)
        batch.held.add(part)
        return Offer(Verdict.COMPLETE, batch=batch)

    def _hold(self, hub: _Hub, batch: OpenBatch, part: int, size: int, now: float) -> Offer:
        offer = Offer(Verdict.HELD)
        limits = self.limits
        if batch.size + size > limits.max_bytes:
            reason = (f"batch {batch.batch_id!r} would hold more than the {limits.max_bytes} bytes a hub may hold "
                      "in open batches")
            if batch.held:  # the parts already held go to quarantine with this one
                offer.evicted.append((batch, reason))
            self._close(hub, batch, now, complete=False)
            offer.verdict, offer.reason = Verdict.REFUSED, reason
            return offer
        if batch.batch_id not in hub.open and len(hub.open) >= limits.max_open:
            oldest = next(iter(hub.open.values()))
            self._close(hub, oldest, now, complete=False)
            offer.evicted.append((oldest, f"given up for a newer batch: the hub had {limits.max_open} batches open, "
                                          "its limit"))
        while hub.size + size > limits.max_bytes:
            oldest = next(b for b in hub.open.values() if b is not batch)
            self._close(hub, oldest, now, complete=False)
            offer.evicted.append((oldest, f"given up to make room: the hub's open batches would hold more than "
                                          f"{limits.max_bytes} bytes"))
        batch.held.add(part)
        batch.size += size
        hub.size += size
        hub.open[batch.batch_id] = batch
        return offer

    def _close(self, hub: _Hub, batch: OpenBatch, now: float, *, complete: bool) -> None:
        """No longer open (if it was): remembered as completed or given up."""
        if hub.open.pop(batch.batch_id, None) is not None:
            hub.size -= batch.size
        hub.closed[batch.batch_id] = (now, complete)
        self._forget_old(hub, now)

    def _forget_old(self, hub: _Hub, now: float) -> None:
        closed = hub.closed
        while closed:
            batch_id, (at, _) = next(iter(closed.items()))
            if len(closed) <= self.limits.max_remembered and now - at < self.limits.timeout:
                break
            del closed[batch_id]

    # --- time -------------------------------------------------------------------------------------

    def expire(self, now: float) -> list[OpenBatch]:
        """Give up the batches whose timeout has passed (they are no longer open)."""
        due = [b for hub in self._hubs.values() for b in hub.open.values() if b.deadline <= now]
        for batch in due:
            self._close(self._hubs[batch.hub_id], batch, now, complete=False)
        return due

    def next_deadline(self) -> float | None:
        return min((b.deadline for hub in self._hubs.values() for b in hub.open.values()), default=None)

    # --- restart ----------------------------------------------------------------------------------

    def restore(self, hub_id: str, batch_id: str, part: int, parts: int, size: int, received_at: float) -> None:
        """A part held before a restart, of `size` bytes (limits were checked when it arrived)."""
        hub = self._hubs.setdefault(hub_id, _Hub())
        batch = hub.open.get(batch_id)
        if batch is None:
            batch = hub.open[batch_id] = OpenBatch(hub_id, batch_id, parts, received_at,
                                                   received_at + self.limits.timeout)
        elif received_at < batch.opened_at:
            batch.opened_at, batch.deadline = received_at, received_at + self.limits.timeout
        if part not in batch.held:
            batch.held.add(part)
            batch.size += size
            hub.size += size

    def remember(self, hub_id: str, batch_id: str, closed_at: float, complete: bool) -> None:
        """A batch closed before a restart."""
        self._hubs.setdefault(hub_id, _Hub()).closed[batch_id] = (closed_at, complete)

    # --- views ------------------------------------------------------------------------------------

    def open_batches(self, hub_id: str) -> list[OpenBatch]:
        hub = self._hubs.get(hub_id)
        return list(hub.open.values()) if hub is not None else []

    def held_bytes(self, hub_id: str | None = None) -> int:
        if hub_id is not None:
            hub = self._hubs.get(hub_id)
            return hub.size if hub is not None else 0
        return sum(hub.size for hub in self._hubs.values())
