"""A device-hour of readings as one compact value: the `data` of a reading_hours row (store/compaction.py).

Columnar: the readings' own times, their arrival times, then one column per metric, each in the densest form
that gives every value back exactly (decoded readings equal the rows they replace, tests/unit/
test_reading_blocks.py):
  * integers: deltas from the previous value, in the narrowest fixed width that holds them all;
  * floats that are all exact decimals of at most 6 places (pm25 12.34, a device's millisecond time): their
    scaled integers, delta-coded the same way (each value is checked to decode to the very same float);
  * other floats (a clock's time.time()): the 8-byte doubles, byte planes apart (exponents compress);
  * booleans: a byte each; anything else (strings, mixed types): a JSON list.
Which metrics a reading has, in which order, is a "shape" (most hours have one); `extra` fields are kept by
reading index. A JSON header describes the columns; header and columns go through zlib.

Readings come in and go out in the order given (compaction gives them by time, then by id).
"""

from __future__ import annotations

import array
import json
import math
import operator
import struct
import sys
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

# (ts, received_at, metrics, extra or None)
Entry = tuple[float, float, dict[str, Any], dict[str, Any] | None]

VERSION = b"\x01"
MAX_PLACES = 6
_WIDTHS = (("b", 1 << 7), ("h", 1 << 15), ("i", 1 << 31), ("q", 1 << 63))
_BIG_ENDIAN = sys.byteorder == "big"  # the stored arrays are little-endian on every machine
_header_len = struct.Struct("<I")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _pack(typecode: str, values: Sequence[int] | Sequence[float]) -> bytes:
    packed = array.array(typecode, values)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def _unpack(typecode: str, data: bytes) -> list[Any]:
    unpacked = array.array(typecode)
    unpacked.frombytes(data)
    if _BIG_ENDIAN:
        unpacked.byteswap()
    return unpacked.tolist()


def _deltas(ints: list[int]) -> tuple[list[Any], bytes] | None:
    """[first, typecode], the packed deltas after the first; None when a delta does not fit 64 bits."""
    deltas = list(map(operator.sub, ints[1:], ints[:-1]))
    widest = max(max(deltas), -min(deltas)) if deltas else 0
    for typecode, bound in _WIDTHS:
        if widest < bound:
            return [ints[0], typecode], _pack(typecode, deltas)
    return None


def _undelta(first: int, typecode: str, data: bytes) -> list[int]:
    out = [first]
    value = first
    for delta in _unpack(typecode, data):
        value += delta
        out.append(value)
    return out


def _decimal_ints(values: list[float]) -> tuple[int, list[int]] | None:
    """(places, the values times 10**places) when every value is that decimal exactly (and none is -0.0)."""
    for v in values:
        if not (abs(v) < 2.0**53 and (v != 0.0 or math.copysign(1.0, v) > 0)):
            return None
    first = values[0]
    for places in range(MAX_PLACES + 1):
        scale = 10**places
        if round(first * scale) / scale != first:  # most tries end at the first value
            continue
        scaled = [round(v * scale) for v in values]
        if [k / scale for k in scaled] == values:  # each value is its scaled integer over the scale, exactly
            return places, scaled
    return None


def _shuffled(values: list[float]) -> bytes:
    raw = _pack("d", values)
    return b"".join(raw[i::8] for i in range(8))


def _unshuffled(data: bytes) -> list[float]:
    n = len(data) // 8
    raw = bytearray(len(data))
    for i in range(8):
        raw[i::8] = data[i * n:(i + 1) * n]
    return _unpack("d", bytes(raw))


def _column(values: list[Any]) -> tuple[list[Any], bytes]:
    """A column's descriptor (its kind first) and its bytes."""
    kinds = {v.__class__ for v in values}
    if kinds == {int} and (coded := _deltas(values)) is not None:
        return ["i", *coded[0]], coded[1]
    if kinds == {float}:
        decimal = _decimal_ints(values)
        if decimal is not None and (coded := _deltas(decimal[1])) is not None:
            return ["d", decimal[0], *coded[0]], coded[1]
        return ["f"], _shuffled(values)
    if kinds == {bool}:
        return ["b"], bytes(1 if v else 0 for v in values)
    return ["j", values], b""


def _values(desc: list[Any], data: bytes) -> list[Any]:
    kind = desc[0]
    if kind == "i":
        return _undelta(desc[1], desc[2], data)
    if kind == "d":
        scale = 10 ** desc[1]
        return [k / scale for k in _undelta(desc[2], desc[3], data)]
    if kind == "f":
        return _unshuffled(data)
    if kind == "b":
        return [b == 1 for b in data]
    return list(desc[1])


def encode(entries: Sequence[Entry]) -> bytes:
    """The readings (at least one) as one value."""
    shapes: dict[tuple[str, ...], int] = {}
    shape_of: list[int] = []
    columns: dict[str, list[Any]] = {}
    extras: list[list[Any]] = []
    for i, (_, _, metrics, extra) in enumerate(entries):
        keys = tuple(metrics)
        shape_of.append(shapes.setdefault(keys, len(shapes)))
        for key, value in metrics.items():
            columns.setdefault(key, []).append(value)
        if extra is not None:
            extras.append([i, extra])
    parts: list[bytes] = []

    def described(values: list[Any]) -> list[Any]:
        desc, data = _column(values)
        parts.append(data)
        return [*desc, len(data)]

    header: dict[str, Any] = {
        "n": len(entries),
        "ts": described([e[0] for e in entries]),
        "rx": described([e[1] for e in entries]),
        "shapes": [list(keys) for keys in shapes],
        "si": described(shape_of) if len(shapes) > 1 else None,
        "cols": {key: described(values) for key, values in columns.items()},
        "x": extras,
    }
    head = _dumps(header).encode()
    return VERSION + zlib.compress(_header_len.pack(len(head)) + head + b"".join(parts), 9)


class CorruptBlockError(ValueError):
    """A block that does not decode: another version, or damaged on the disk."""


def decode(blob: bytes) -> list[Entry]:
    """The readings of encode(), in the same order, equal to those given; CorruptBlockError if it does not
    decode."""
    if blob[:1] != VERSION:
        raise CorruptBlockError(f"unknown reading block version {blob[:1]!r}")
    try:
        return _decode(zlib.decompress(blob[1:]))
    except (zlib.error, ValueError, LookupError, TypeError, StopIteration, struct.error) as exc:
        raise CorruptBlockError(f"reading block does not decode: {type(exc).__name__}: {exc}") from exc


def _decode(raw: bytes) -> list[Entry]:
    (size,) = _header_len.unpack_from(raw)
    header = json.loads(raw[4:4 + size])
    offset = 4 + size

    def column(desc: list[Any]) -> list[Any]:
        nonlocal offset
        length = desc[-1]
        data = raw[offset:offset + length]
        offset += length
        return _values(desc[:-1], data)

    ts = column(header["ts"])
    rx = column(header["rx"])
    shape_of = column(header["si"]) if header["si"] is not None else [0] * header["n"]
    values: dict[str, Iterator[Any]] = {key: iter(column(desc)) for key, desc in header["cols"].items()}
    shapes = [[(key, values[key]) for key in keys] for keys in header["shapes"]]
    extras = {i: extra for i, extra in header["x"]}
    return [(ts[i], rx[i], {key: next(it) for key, it in shapes[shape_of[i]]}, extras.get(i))
            for i in range(header["n"])]
