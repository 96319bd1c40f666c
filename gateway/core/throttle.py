"""Log lines for events that can come in floods: at most one per kind and interval, with a count.

A connection flood, a wrong-password storm or a full file table can produce thousands of events a
second; a line (let alone a traceback) for each once filled 75 MB of log in 70 s. The first event of a
kind is logged at once; later ones within the interval are only counted, and the next line logged
says how many were left out. Metrics count every event regardless.

Keys must come from a small fixed set (a reason, an event name), never from the peer (an address),
or the table itself grows with the flood.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class LogThrottle:
    def __init__(self, interval: float = 60.0, now: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._now = now
        self._state: dict[Hashable, list[float]] = {}  # key -> [time of its last line, events left out since]

    def allow(self, key: Hashable) -> int | None:
        """None: do not log this one (it is counted). Otherwise log it, saying the returned number of events
        of this kind were left out since its previous line."""
        now = self._now()
        state = self._state.get(key)
        if state is None or now - state[0] >= self._interval:
            left_out = 0 if state is None else int(state[1])
            self._state[key] = [now, 0]
            return left_out
        state[1] += 1
        return None
