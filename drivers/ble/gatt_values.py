"""GATT characteristic values -> numbers (little-endian, as the GATT assigned numbers are): pure."""

from __future__ import annotations

import math
import struct

from gateway.core.errors import PayloadError

# type -> (size, struct format or None for 24-bit, signed)
_TYPES: dict[str, tuple[int, str | None, bool]] = {
    "uint8": (1, "<B", False), "int8": (1, "<b", True), "uint16": (2, "<H", False), "int16": (2, "<h", True),
    "uint24": (3, None, False), "int24": (3, None, True), "uint32": (4, "<I", False), "int32": (4, "<i", True),
    "float32": (4, "<f", True),
}


def decode_value(data: bytes, value_type: str, scale: float) -> float | int:
    """The characteristic's value as `value_type` times `scale`; PayloadError when it has fewer bytes."""
    size, fmt, signed = _TYPES[value_type]
    if len(data) < size:
        raise PayloadError(f"GATT value of {len(data)} bytes, a {value_type} needs {size}")
    raw: float | int = (int.from_bytes(data[:size], "little", signed=signed) if fmt is None
                        else struct.unpack_from(fmt, data)[0])
    if isinstance(raw, float) and not math.isfinite(raw):
        raise PayloadError(f"GATT value is not a finite number: {raw}")
    if scale == 1:
        return raw
    return round(raw * scale, 10)
