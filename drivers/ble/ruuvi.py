"""Ruuvi manufacturer data (company 0x0499): data formats 3 (RAWv1), 5 (RAWv2), 6 and E1. No I/O.

`data` is the manufacturer data after the company id, starting with the format byte. Not-available
sentinels (the signed minimum for signed fields, all ones for unsigned ones and the MAC) come out as None;
reserved bytes are ignored. Units: temperature degC, humidity %RH, pressure hPa (like BTHome), acceleration g,
battery V, particulate matter ug/m3, CO2 ppm, illuminance lux.
"""

from __future__ import annotations

import math
import struct
from typing import Any

from gateway.core.errors import PayloadError

_DF3 = struct.Struct(">BBbBHhhhH")  # 14 bytes
_DF5 = struct.Struct(">BhHHhhhHBH6s")  # 24 bytes
_DF6 = struct.Struct(">BhHHHHBBBxBB3s")  # 20 bytes (byte 14 reserved)
_E1 = struct.Struct(">BhHHHHHHHBB3s3x3sB5x6s")  # 40 bytes (reserved: 3 after luminosity, 5 after flags)

_LUX_DELTA = math.log(65536) / 254  # DF6 luminosity: logarithmic code 0..254


def _mac(raw: bytes) -> str | None:
    return None if raw == b"\xff" * len(raw) else raw.hex(":").upper()


def decode_ruuvi(data: bytes) -> dict[str, Any]:
    if not data:
        raise PayloadError("Ruuvi: empty manufacturer data")
    fmt = data[0]
    if fmt == 5:
        return _df5(data)
    if fmt == 0xE1:
        return _e1(data)
    if fmt == 6:
        return _df6(data)
    if fmt == 3:
        return _df3(data)
    raise PayloadError(f"Ruuvi: data format 0x{fmt:02x} not supported (3, 5, 6, E1 are)")


def _unpack(layout: struct.Struct, data: bytes, name: str) -> tuple[Any, ...]:
    if len(data) < layout.size:
        raise PayloadError(f"Ruuvi {name}: {len(data)} bytes, {layout.size} needed")
    return layout.unpack_from(data)


def _df5(data: bytes) -> dict[str, Any]:
    _, t, h, p, ax, ay, az, power, movement, seq, mac = _unpack(_DF5, data, "format 5")
    battery_mv = power >> 5
    tx = power & 0x1F
    return {
        "temperature": None if t == -32768 else round(t * 0.005, 3),
        "humidity": None if h == 0xFFFF else round(h * 0.0025, 4),
        "pressure": None if p == 0xFFFF else round((p + 50000) / 100, 2),
        "acceleration_x": None if ax == -32768 else ax / 1000,
        "acceleration_y": None if ay == -32768 else ay / 1000,
        "acceleration_z": None if az == -32768 else az / 1000,
        "battery_voltage": None if battery_mv == 0x7FF else (battery_mv + 1600) / 1000,
        "tx_power": None if tx == 0x1F else tx * 2 - 40,
        "movement_counter": None if movement == 0xFF else movement,
        "measurement_sequence": None if seq == 0xFFFF else seq,
        "mac": _mac(mac),
    }


def _nine_bits(high: int, flags: int, bit: int) -> int | None:
    value = high << 1 | (flags >> bit) & 1
    return None if value == 0x1FF else value


def _df6(data: bytes) -> dict[str, Any]:
    _, t, h, p, pm25, co2, voc, nox, lux, seq, flags, mac = _unpack(_DF6, data, "format 6")
    return {
        "temperature": None if t == -32768 else round(t * 0.005, 3),
        "humidity": None if h == 0xFFFF else round(h * 0.0025, 4),
        "pressure": None if p == 0xFFFF else round((p + 50000) / 100, 2),
        "pm25": None if pm25 == 0xFFFF else round(pm25 * 0.1, 1),
        "co2": None if co2 == 0xFFFF else co2,
        "voc_index": _nine_bits(voc, flags, 6),
        "nox_index": _nine_bits(nox, flags, 7),
        "illuminance": None if lux == 0xFF else (0.0 if lux == 0 else round(math.exp(lux * _LUX_DELTA) - 1, 2)),
        "measurement_sequence": seq,  # every value is valid in format 6
        "calibration_in_progress": bool(flags & 1),
        "mac_lsb24": mac.hex(":").upper(),
    }


def _e1(data: bytes) -> dict[str, Any]:
    _, t, h, p, pm1, pm25, pm4, pm10, co2, voc, nox, lux, seq, flags, mac = _unpack(_E1, data, "format E1")
    lux_raw = int.from_bytes(lux, "big")
    seq_raw = int.from_bytes(seq, "big")
    return {
        "temperature": None if t == -32768 else round(t * 0.005, 3),
        "humidity": None if h == 0xFFFF else round(h * 0.0025, 4),
        "pressure": None if p == 0xFFFF else round((p + 50000) / 100, 2),
        "pm1": None if pm1 == 0xFFFF else round(pm1 * 0.1, 1),
        "pm25": None if pm25 == 0xFFFF else round(pm25 * 0.1, 1),
        "pm4": None if pm4 == 0xFFFF else round(pm4 * 0.1, 1),
        "pm10": None if pm10 == 0xFFFF else round(pm10 * 0.1, 1),
        "co2": None if co2 == 0xFFFF else co2,
        "voc_index": _nine_bits(voc, flags, 6),
        "nox_index": _nine_bits(nox, flags, 7),
        "illuminance": None if lux_raw == 0xFFFFFF else round(lux_raw * 0.01, 2),
        "measurement_sequence": None if seq_raw == 0xFFFFFF else seq_raw,
        "calibration_in_progress": bool(flags & 1),
        "mac": _mac(mac),
    }


def _df3(data: bytes) -> dict[str, Any]:
    _, h, t_int, t_frac, p, ax, ay, az, battery_mv = _unpack(_DF3, data, "format 3")
    # The integer part is sign and magnitude (bit 7 the sign), not two's complement.
    magnitude = (t_int & 0x7F) + t_frac / 100
    return {
        "temperature": round(-magnitude if t_int < 0 else magnitude, 2),
        "humidity": h * 0.5,
        "pressure": round((p + 50000) / 100, 2),
        "acceleration_x": ax / 1000,
        "acceleration_y": ay / 1000,
        "acceleration_z": az / 1000,
        "battery_voltage": battery_mv / 1000,
    }
