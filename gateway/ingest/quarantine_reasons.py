"""A quarantine reason's class, the bounded label of ``gateway_quarantined_total{reason}``.

Reasons are free text naming the field and value at fault (``pm25: 9999 out of range 0..1000``): as a
metric label they would make one series per bad value. The class names what kind of problem it was.
"""

from __future__ import annotations

# (text the reason starts with or contains, class), first match wins
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("payload of ", "too-large"),
    ("not UTF-8", "not-utf8"),
    ("not JSON", "not-json"),
    ("not a JSON object", "not-object"),
    ("not storable", "not-storable"),
    ("JSON nested deeper", "too-deep"),
    ("ts: ", "timestamp"),
    ("status must be", "bad-status"),
    ("unknown channel", "channel"),
    ("hub batches", "channel"),
)
_CONTAINS: tuple[tuple[str, str], ...] = (
    (" out of range", "out-of-range"),
    ("not a finite number", "out-of-range"),
    (": expected ", "wrong-type"),
    ("is not a valid time", "timestamp"),
    ("is not ISO-8601", "timestamp"),
)


def reason_class(reason: str) -> str:
    for prefix, kind in _PREFIXES:
        if reason.startswith(prefix):
            return kind
    for part, kind in _CONTAINS:
        if part in reason:
            return kind
    return "invalid"
