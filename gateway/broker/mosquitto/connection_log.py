"""Presence and command readiness from Mosquitto's log (its stderr): no `$SYS`, no plugin, no polling.

Mosquitto 2.0 logs every accepted login, every end of a connection and every subscription, one line each
(`connection_messages true`, `log_type subscribe`, no timestamps). That is the only per-client event
stream it offers without a C plugin, and it is complete: a refused login never logs "New client
connected", a takeover logs "already connected, closing old connection" and no end for the old one, and
every other end of a connection (DISCONNECT, lost socket, keepalive timeout, protocol error) logs a line
naming the client. The format of these lines is checked against the installed Mosquitto by the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CONNECTED = re.compile(r"^New client connected from \S+ as (\S+) \(p\d, c([01]), k\d+(?:, u'([^']*)')?\)\.$")
_ENDED = re.compile(
    r"^(?:Client (\S+) (?:closed its connection|disconnected|has exceeded timeout|been disconnected)"
    r"|Socket error on client ([^\s,]+),"
    r"|Bad socket read/write on client ([^\s:]+):)"
)
_SUBSCRIBED = re.compile(r"^(\S+) [012] (\S+)$")


@dataclass(frozen=True, slots=True)
class Connected:
    client_id: str  # what the lines about this connection name it by
    device: str  # the username when there is one (the device id), else the client id
    clean_session: bool


@dataclass(frozen=True, slots=True)
class Ended:
    client_id: str


@dataclass(frozen=True, slots=True)
class Subscribed:
    client_id: str
    topic_filter: str


LogEvent = Connected | Ended | Subscribed


def parse_line(line: str) -> LogEvent | None:
    """One log line -> the event it reports (None: a line about something else)."""
    if line.startswith("New client connected"):
        m = _CONNECTED.match(line)
        return Connected(m[1], m[3] or m[1], m[2] == "1") if m else None
    if line.startswith(("Client ", "Socket error", "Bad socket")):
        if " already connected, closing old connection" in line:
            return None  # a takeover: the new connection's own line follows, the device stays connected
        m = _ENDED.match(line)
        return Ended(m[1] or m[2] or m[3]) if m else None
    m = _SUBSCRIBED.match(line)
    return Subscribed(m[1], m[2]) if m else None
