"""Limits every payload on the LAN broker must meet before its driver parses it. Pure functions."""

from __future__ import annotations

import re

# Strings (skipped whole, escapes included) and the brackets that nest.
_NESTING_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def nesting_depth(payload: bytes, limit: int) -> int:
    """How deep the JSON text's arrays and objects nest (brackets inside strings do not count); stops
    counting past `limit`. A payload with no more brackets than `limit` is answered without a scan."""
    if payload.count(b"{") + payload.count(b"[") <= limit:
        return min(limit, payload.count(b"{") + payload.count(b"["))
    depth = deepest = 0
    for token in _NESTING_TOKENS.finditer(payload):
        c = token.group()
        if c in (b"{", b"["):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif c in (b"}", b"]"):
            depth -= 1
    return deepest
