"""Failed logins slow down the next ones from the same source address (pure bookkeeping, no I/O).

A source's first `free` failures cost nothing (a device with a stale password retries a few times, an
installer mistypes). After that each further attempt from it waits: 0.25 s, 0.5 s, 1 s, ... doubling to
`cap` after each failure, and attempts are spaced by that delay even when they arrive together on
parallel connections, so a source guesses at most one password per delay. A successful login clears the
source; a source that failed nothing for `forget_after` seconds starts afresh. At most `max_sources` are
remembered (the oldest are forgotten first), so a flood of addresses cannot grow the table without bound.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Source:
    failures: int
    last_failure: float
    next_at: float  # no attempt before this (monotonic time)


class LoginBackoff:
    def __init__(
        self,
        *,
        free: int = 5,
        base: float = 0.25,
        cap: float = 30.0,
        forget_after: float = 600.0,
        max_sources: int = 10_000,
    ) -> None:
        self.free = free
        self.base = base
        self.cap = cap
        self.forget_after = forget_after
        self.max_sources = max_sources
        self._sources: dict[str, _Source] = {}

    def delay(self, failures: int) -> float:
        """How long an attempt waits after `failures` failed ones."""
        over = failures - self.free
        return 0.0 if over < 0 else min(self.cap, self.base * 2.0 ** min(over, 30))

    def wait_before_check(self, source: str, now: float) -> float:
        """Seconds this attempt must wait before its password is checked (0: at once); reserves its turn."""
        entry = self._sources.get(source)
        if entry is None:
            return 0.0
        if now - entry.last_failure > self.forget_after:
            del self._sources[source]
            return 0.0
        delay = self.delay(entry.failures)
        if delay == 0.0:
            return 0.0
        start = max(now, entry.next_at)
        entry.next_at = start + delay
        return start - now

    def failed(self, source: str, now: float) -> None:
        entry = self._sources.pop(source, None)  # re-inserted: the dict's order is the age order
        if entry is None or now - entry.last_failure > self.forget_after:
            entry = _Source(0, now, now)
        entry.failures += 1
        entry.last_failure = now
        entry.next_at = max(entry.next_at, now + self.delay(entry.failures))
        self._sources[source] = entry
        while len(self._sources) > self.max_sources:
            del self._sources[next(iter(self._sources))]

    def succeeded(self, source: str) -> None:
        self._sources.pop(source, None)

    def failures(self, source: str) -> int:
        entry = self._sources.get(source)
        return 0 if entry is None else entry.failures
