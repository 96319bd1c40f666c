"""Normalise device timestamps to Unix epoch seconds (CONTRACT: seconds, milliseconds or ISO-8601)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from gateway.core.errors import PayloadError

# Values above 10^11 are milliseconds: 10^11 seconds is the year 5138, 10^11 ms is 1973.
_MS_THRESHOLD = 1e11


def normalise_ts(value: object, field: str) -> float:
    if isinstance(value, bool):
        raise PayloadError(f"{field}: expected a number or ISO-8601 string, got a boolean")
    if isinstance(value, int | float):
        ts = float(value)
        if not math.isfinite(ts) or ts <= 0:
            raise PayloadError(f"{field}: {value!r} is not a valid time")
        return ts / 1000.0 if ts > _MS_THRESHOLD else ts
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            raise PayloadError(f"{field}: {value!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # devices without a zone speak UTC
        return parsed.timestamp()
    raise PayloadError(f"{field}: expected a number or ISO-8601 string, got {type(value).__name__}")
