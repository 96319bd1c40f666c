"""Modbus register codec: 16-bit registers <-> values, for every data type, swap, scale and offset. No I/O.

Key names and meanings follow Home Assistant's modbus integration, so installers carry their maps over:

* `data_type`: int16 | uint16 | int32 | uint32 | float32 | int64 | uint64 | float64 | bool. A register holds
  16 bits, big-endian within the register (the Modbus wire order); wider types span 2 or 4 registers.
* `swap`: none | byte (the two bytes of each register) | word (the order of the registers, 32/64-bit types
  only) | word_byte (both). A device that sends the low word first (CDAB) needs `word`.
* the value is ``raw * scale + offset``, rounded to `precision` decimals when given (precision 0: an int).
  Without `precision`, integer types with a whole scale and offset stay ints; a float32 is rounded to the
  7 significant digits it carries (0x4366 0x3334 is 230.2, not 230.1999969).

`FormatCodec` compiles one point's format once: decoding a polled register block is a slice, a struct
unpack and the arithmetic (the poll path's per-point cost).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.core.models import MetricValue

DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64", "bool"]
Swap = Literal["none", "byte", "word", "word_byte"]

DATA_TYPES: tuple[DataType, ...] = ("int16", "uint16", "int32", "uint32", "float32", "int64", "uint64", "float64",
                                    "bool")
SWAPS: tuple[Swap, ...] = ("none", "byte", "word", "word_byte")

# data type -> (registers it spans, struct format of its big-endian bytes)
_LAYOUT: dict[DataType, tuple[int, str]] = {
    "int16": (1, ">h"), "uint16": (1, ">H"), "bool": (1, ">H"),
    "int32": (2, ">i"), "uint32": (2, ">I"), "float32": (2, ">f"),
    "int64": (4, ">q"), "uint64": (4, ">Q"), "float64": (4, ">d"),
}
_FLOATS = frozenset({"float32", "float64"})


def register_count(data_type: DataType) -> int:
    """How many 16-bit registers a value of this type spans."""
    return _LAYOUT[data_type][0]


@dataclass(frozen=True, slots=True)
class ValueFormat:
    data_type: DataType = "uint16"
    swap: Swap = "none"
    scale: float = 1.0
    offset: float = 0.0
    precision: int | None = None


class FormatCodec:
    """One point's format, compiled: `decode(registers, start)` and `encode(value)`."""

    __slots__ = ("_bool", "_count", "_float32", "_integer_result", "_precision", "_raw", "_regs", "_scale",
                 "_swap_bytes", "_swap_words", "_unit", "fmt")

    def __init__(self, fmt: ValueFormat) -> None:
        self.fmt = fmt
        count, raw = _LAYOUT[fmt.data_type]
        self._count = count
        self._raw = struct.Struct(raw)
        self._swap_bytes = fmt.swap in ("byte", "word_byte")
        self._swap_words = fmt.swap in ("word", "word_byte")
        self._regs = struct.Struct(("<" if self._swap_bytes else ">") + "H" * count)
        self._bool = fmt.data_type == "bool"
        self._float32 = fmt.data_type == "float32"
        self._unit = fmt.scale == 1 and fmt.offset == 0
        self._scale = fmt.scale
        self._precision = fmt.precision
        whole = float(fmt.scale).is_integer() and float(fmt.offset).is_integer()
        self._integer_result = (fmt.precision == 0) or (
            fmt.precision is None and whole and fmt.data_type not in _FLOATS
        )

    @property
    def count(self) -> int:
        return self._count

    def decode(self, registers: Sequence[int], start: int = 0) -> MetricValue:
        """The value held by `registers[start : start + count]`."""
        if self._bool:
            return registers[start] != 0
        words = registers[start:start + self._count]
        if self._swap_words:
            words = words[::-1]
        raw: int | float = self._raw.unpack(self._regs.pack(*words))[0]
        if self._float32:
            if not math.isfinite(raw):
                return float(raw)
            raw = float(f"{raw:.7g}")  # the 7 significant digits a float32 carries
        if self._unit and self._precision is None:
            return raw
        value = raw * self._scale + self.fmt.offset
        if self._integer_result:
            return round(value)
        if self._precision is not None:
            return round(value, self._precision)
        return float(value)

    def encode(self, value: MetricValue) -> list[int]:
        """The registers that make a device hold `value`; ValueError if the type cannot carry it."""
        if self._bool:
            return [1 if value else 0]
        if self._unit and isinstance(value, int):
            return self._pack(value)  # exact: a 64-bit integer does not survive a float
        raw: float = (float(value) - self.fmt.offset) / self._scale
        if not math.isfinite(raw):
            raise ValueError(f"{value!r} is not a finite number")
        number: int | float = raw
        if self.fmt.data_type not in _FLOATS:
            number = round(raw)
            if abs(number - raw) > 1e-9 * max(1.0, abs(raw)):
                raise ValueError(f"{value!r} is not a multiple of the scale {self._scale:g}")
        return self._pack(number)

    def _pack(self, number: int | float) -> list[int]:
        try:
            data = self._raw.pack(number)
        except (struct.error, OverflowError) as exc:
            raise ValueError(f"{number!r} does not fit a {self.fmt.data_type}") from exc
        words = list(self._regs.unpack(data))
        if self._swap_words:
            words.reverse()
        return words


def registers_to_value(registers: Sequence[int], fmt: ValueFormat) -> MetricValue:
    return FormatCodec(fmt).decode(registers)


def value_to_registers(value: MetricValue, fmt: ValueFormat) -> list[int]:
    return FormatCodec(fmt).encode(value)
