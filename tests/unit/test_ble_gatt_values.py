"""GATT characteristic values -> numbers: each type little-endian, scaled; short or non-finite values refused."""

from __future__ import annotations

import struct

import pytest

from drivers.ble.gatt_values import decode_value
from gateway.core.errors import PayloadError


@pytest.mark.parametrize(("data", "value_type", "scale", "expected"), [
    (bytes.fromhex("ca09"), "int16", 0.01, 25.06),  # Temperature 0x2A6E
    (bytes.fromhex("bf13"), "uint16", 0.01, 50.55),  # Humidity 0x2A6F
    (bytes.fromhex("61"), "uint8", 1, 97),  # Battery Level 0x2A19
    (bytes.fromhex("ff"), "int8", 1, -1),
    (bytes.fromhex("138a01"), "uint24", 0.1, 10088.3),  # Pressure 0x2A6D is uint32 x0.1 Pa; 24 bits here
    (bytes.fromhex("ffffff"), "int24", 1, -1),
    (bytes.fromhex("138a0100"), "uint32", 1, 100883),
    (bytes.fromhex("feffffff"), "int32", 1, -2),
    (struct.pack("<f", 1.5), "float32", 2, 3.0),
    (bytes.fromhex("ca09ffff"), "int16", 0.01, 25.06),  # trailing bytes (flags, more fields) are ignored
])
def test_values_decode(data: bytes, value_type: str, scale: float, expected: float) -> None:
    assert decode_value(data, value_type, scale) == pytest.approx(expected)


@pytest.mark.parametrize(("data", "value_type", "reason"), [
    (b"\x01", "int16", "1 bytes, a int16 needs 2"),
    (b"", "uint8", "0 bytes"),
    (struct.pack("<f", float("nan")), "float32", "not a finite number"),
])
def test_short_or_non_finite_values_are_refused(data: bytes, value_type: str, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        decode_value(data, value_type, 1)
