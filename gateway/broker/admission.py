"""Which new connections the LAN broker takes: limits in total, before login, and per source address.

Decided when a connection is accepted, before a byte of it is read, so a flood costs an accept and a
close each (a connection nobody limits holds a file until its CONNECT deadline; under systemd's default
of 1,024 files a few hundred idle sockets were enough to stop the daemon accepting devices).

* `max_total`: open connections, logged in or not.
* `max_pending`: connections not yet logged in (from accept until the login is decided).
* `max_per_source`: open connections from one source address (the sources in `unlimited` are exempt:
  loopback by default, where the demo and the benchmarks run 100 simulated devices).

When the total or the pending limit is reached and some pending connection has still not sent its
CONNECT, the oldest such is closed to make room instead of refusing the newcomer: a device sends its
CONNECT as soon as it has connected, so idle sockets cannot crowd devices out. Otherwise the newcomer
is refused. A source over its own limit is always refused.

Pure bookkeeping (no I/O): the backend closes the sockets and counts the refusals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

SOURCE_LIMIT = "source-limit"
PENDING_LIMIT = "pending-limit"
TOTAL_LIMIT = "total-limit"


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted connection, until `ConnectionAdmission.release`."""

    source: str
    close: Callable[[], None]  # drops the socket (used to evict a connection that never sent its CONNECT)
    limited: bool  # counted against its source's limit
    pending: bool = True  # not logged in yet
    waiting: bool = True  # no CONNECT read yet (may be evicted)
    released: bool = field(default=False)
    connect_by: float = 0.0  # when its CONNECT deadline ends (the backend's clock; set when admitted)


class ConnectionAdmission:
    def __init__(
        self, *, max_total: int, max_pending: int, max_per_source: int, unlimited: Iterable[str] = ()
    ) -> None:
        self.max_total = max_total
        self.max_pending = max_pending
        self.max_per_source = max_per_source
        self.unlimited = frozenset(unlimited)
        self.total = 0
        self.pending = 0
        self._per_source: dict[str, int] = {}
        self._waiting: dict[Ticket, None] = {}  # pending tickets with no CONNECT read yet, oldest first

    def admit(self, source: str, close: Callable[[], None]) -> tuple[Ticket | None, str, int]:
        """(the ticket, "", evicted) or (None, the reason it is refused, evicted); `evicted`: connections
        closed to make room (their `close` was called)."""
        limited = source not in self.unlimited
        if limited and self._per_source.get(source, 0) >= self.max_per_source:
            return None, SOURCE_LIMIT, 0
        evicted = 0
        while self.total >= self.max_total or self.pending >= self.max_pending:
            if not self._evict_oldest_waiting():
                return None, TOTAL_LIMIT if self.total >= self.max_total else PENDING_LIMIT, evicted
            evicted += 1
        ticket = Ticket(source, close, limited)
        self.total += 1
        self.pending += 1
        if limited:
            self._per_source[source] = self._per_source.get(source, 0) + 1
        self._waiting[ticket] = None
        return ticket, "", evicted

    def connect_read(self, ticket: Ticket) -> None:
        """Its CONNECT arrived: no longer evicted to make room."""
        if ticket.waiting:
            ticket.waiting = False
            self._waiting.pop(ticket, None)

    def logged_in(self, ticket: Ticket) -> None:
        self.connect_read(ticket)
        if ticket.pending and not ticket.released:
            ticket.pending = False
            self.pending -= 1

    def release(self, ticket: Ticket) -> None:
        """The connection ended (each ticket once; later calls do nothing)."""
        if ticket.released:
            return
        self.connect_read(ticket)
        ticket.released = True
        self.total -= 1
        if ticket.pending:
            ticket.pending = False
            self.pending -= 1
        if ticket.limited:
            left = self._per_source[ticket.source] - 1
            if left:
                self._per_source[ticket.source] = left
            else:
                del self._per_source[ticket.source]

    def _evict_oldest_waiting(self) -> bool:
        if not self._waiting:
            return False
        ticket = next(iter(self._waiting))
        ticket.close()
        self.release(ticket)  # at once: its task sees the closed socket later and releases again (a no-op)
        return True
