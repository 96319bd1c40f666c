"""BTHome v2 (bthome.io): the service data of UUID 0xFCD2 -> named values; AES-CCM decryption. No I/O.

Layout: a device-info byte (bit 0 encrypted, bit 1 MAC included, bit 2 trigger-based, bits 5-7 version = 2),
the MAC (6 bytes, reversed) when bit 1 is set, then objects `id, value` (little-endian). Encrypted: the
objects are AES-CCM ciphertext followed by a 4-byte counter and a 4-byte MIC; the nonce is
MAC (display order) + UUID (d2 fc) + device-info byte + counter.

Names follow bthome-ble's entity keys (co2, tvoc, pm25, dew_point ...); an object that appears more than once
under the same name is numbered `_1`, `_2` in order of appearance. Parsing stops at an unknown object id (a
newer spec revision: what came before is kept); a truncated object makes the whole advertisement malformed.
Text, raw bytes, events and firmware versions are strings: the caller keeps them beside the numeric metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from gateway.core.errors import PayloadError
from gateway.core.models import MetricValue

BTHOME_UUID_LE = b"\xd2\xfc"

INFO_ENCRYPTED = 0x01
INFO_MAC_INCLUDED = 0x02
INFO_TRIGGER_BASED = 0x04

# Object kinds beyond plain numbers
_NUM, _BIN, _BUTTON, _DIMMER, _COMMAND, _TEXT, _RAW, _FW = range(8)

BUTTON_EVENTS = {0x01: "press", 0x02: "double_press", 0x03: "triple_press", 0x04: "long_press",
                 0x05: "long_double_press", 0x06: "long_triple_press", 0x80: "hold_press", 0x81: "hold_release"}
DIMMER_EVENTS = {0x01: "rotate_left", 0x02: "rotate_right"}
COMMAND_EVENTS = {0x00: "off", 0x01: "on", 0x02: "toggle", 0x03: "step_up", 0x04: "step_down"}

# id -> (name, data length, signed, factor); the bthome.io format tables (sensor, binary, event, device info)
_NUMERIC: dict[int, tuple[str, int, bool, float]] = {
    0x00: ("packet_id", 1, False, 1), 0x01: ("battery", 1, False, 1), 0x02: ("temperature", 2, True, 0.01),
    0x03: ("humidity", 2, False, 0.01), 0x04: ("pressure", 3, False, 0.01), 0x05: ("illuminance", 3, False, 0.01),
    0x06: ("mass_kg", 2, False, 0.01), 0x07: ("mass_lb", 2, False, 0.01), 0x08: ("dew_point", 2, True, 0.01),
    0x09: ("count", 1, False, 1), 0x0A: ("energy", 3, False, 0.001), 0x0B: ("power", 3, False, 0.01),
    0x0C: ("voltage", 2, False, 0.001), 0x0D: ("pm25", 2, False, 1), 0x0E: ("pm10", 2, False, 1),
    0x12: ("co2", 2, False, 1), 0x13: ("tvoc", 2, False, 1), 0x14: ("moisture", 2, False, 0.01),
    0x2E: ("humidity", 1, False, 1), 0x2F: ("moisture", 1, False, 1), 0x3D: ("count", 2, False, 1),
    0x3E: ("count", 4, False, 1), 0x3F: ("rotation", 2, True, 0.1), 0x40: ("distance_mm", 2, False, 1),
    0x41: ("distance_m", 2, False, 0.1), 0x42: ("duration", 3, False, 0.001), 0x43: ("current", 2, False, 0.001),
    0x44: ("speed", 2, False, 0.01), 0x45: ("temperature", 2, True, 0.1), 0x46: ("uv_index", 1, False, 0.1),
    0x47: ("volume", 2, False, 0.1), 0x48: ("volume_ml", 2, False, 1), 0x49: ("volume_flow_rate", 2, False, 0.001),
    0x4A: ("voltage", 2, False, 0.1), 0x4B: ("gas", 3, False, 0.001), 0x4C: ("gas", 4, False, 0.001),
    0x4D: ("energy", 4, False, 0.001), 0x4E: ("volume", 4, False, 0.001), 0x4F: ("water", 4, False, 0.001),
    0x50: ("timestamp", 4, False, 1), 0x51: ("acceleration", 2, False, 0.001), 0x52: ("gyroscope", 2, False, 0.001),
    0x55: ("volume_storage", 4, False, 0.001), 0x56: ("conductivity", 2, False, 1),
    0x57: ("temperature", 1, True, 1), 0x58: ("temperature", 1, True, 0.35), 0x59: ("count", 1, True, 1),
    0x5A: ("count", 2, True, 1), 0x5B: ("count", 4, True, 1), 0x5C: ("power", 4, True, 0.01),
    0x5D: ("current", 2, True, 0.001), 0x5E: ("direction", 2, False, 0.01), 0x5F: ("precipitation", 2, False, 0.1),
    0x60: ("channel", 1, False, 1), 0x61: ("rotational_speed", 2, False, 1), 0x62: ("speed", 4, True, 0.000001),
    0x63: ("acceleration", 4, True, 0.000001), 0x64: ("light_level", 1, False, 1),
    0x65: ("settings_revision", 1, False, 1), 0xF0: ("device_type_id", 2, False, 1),
}
_BINARY: dict[int, str] = {
    0x0F: "generic_boolean", 0x10: "power_on", 0x11: "opening", 0x15: "battery_low", 0x16: "battery_charging",
    0x17: "carbon_monoxide", 0x18: "cold", 0x19: "connectivity", 0x1A: "door", 0x1B: "garage_door",
    0x1C: "gas_detected", 0x1D: "heat", 0x1E: "light", 0x1F: "lock", 0x20: "moisture_detected", 0x21: "motion",
    0x22: "moving", 0x23: "occupancy", 0x24: "plug", 0x25: "presence", 0x26: "problem", 0x27: "running",
    0x28: "safety", 0x29: "smoke", 0x2A: "sound", 0x2B: "tamper", 0x2C: "vibration", 0x2D: "window",
}


def _decimals(factor: float) -> int:
    exponent = Decimal(str(factor)).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


# id -> (kind, name, length (0: length byte follows), signed, factor, decimals): one lookup per object
OBJECTS: dict[int, tuple[int, str, int, bool, float, int]] = {
    **{oid: (_NUM, name, n, signed, factor, _decimals(factor)) for oid, (name, n, signed, factor) in _NUMERIC.items()},
    **{oid: (_BIN, name, 1, False, 1, 0) for oid, name in _BINARY.items()},
    0x3A: (_BUTTON, "event:button", 1, False, 1, 0),
    0x3B: (_COMMAND, "event:command", 0, False, 1, 0),
    0x3C: (_DIMMER, "event:dimmer", 2, False, 1, 0),
    0x53: (_TEXT, "text", 0, False, 1, 0),
    0x54: (_RAW, "raw", 0, False, 1, 0),
    0xF1: (_FW, "firmware_version", 4, False, 1, 0),
    0xF2: (_FW, "firmware_version", 3, False, 1, 0),
}


@dataclass(slots=True, frozen=True)
class BthomeFrame:
    """The parts of one BTHome v2 service-data value, before decryption."""

    info: int
    mac: bytes | None  # display order (A4:C1:... -> a4c1...), when the payload carries it
    body: bytes  # the objects, or their ciphertext
    counter: int | None = None  # encrypted only
    counter_bytes: bytes = b""
    mic: bytes = b""

    @property
    def encrypted(self) -> bool:
        return bool(self.info & INFO_ENCRYPTED)

    @property
    def trigger_based(self) -> bool:
        return bool(self.info & INFO_TRIGGER_BASED)


def split_frame(data: bytes) -> BthomeFrame:
    """Service data -> its parts; raises PayloadError when it is not BTHome v2 or too short."""
    if not data:
        raise PayloadError("BTHome: empty service data")
    info = data[0]
    version = info >> 5
    if version != 2:
        raise PayloadError(f"BTHome: version {version} not supported (device-info byte 0x{info:02x})")
    pos = 1
    mac = None
    if info & INFO_MAC_INCLUDED:
        if len(data) < 7:
            raise PayloadError("BTHome: MAC flag set but fewer than 6 bytes follow")
        mac = data[6:0:-1]
        pos = 7
    if not info & INFO_ENCRYPTED:
        return BthomeFrame(info, mac, data[pos:])
    if len(data) - pos < 10:
        raise PayloadError(f"BTHome: encrypted payload of {len(data) - pos} bytes (at least 10: data, counter, MIC)")
    counter_bytes = data[-8:-4]
    return BthomeFrame(info, mac, data[pos:-8], int.from_bytes(counter_bytes, "little"), counter_bytes, data[-4:])


def nonce(mac: bytes, frame: BthomeFrame) -> bytes:
    return mac + BTHOME_UUID_LE + bytes((frame.info,)) + frame.counter_bytes


def decode_objects(body: bytes) -> tuple[dict[str, MetricValue], dict[str, str]]:
    """The objects of a (decrypted) payload -> (numeric and boolean values, text values); raises PayloadError
    for a truncated object.

    The per-advert hot path: an advertisement of numbers only, each name once (what sensors send), is read in
    one pass; anything else (binary sensors, events, text, a repeated name, an unknown id) by `parse_objects`.
    """
    metrics: dict[str, MetricValue] = {}
    count = 0
    pos = 0
    end = len(body)
    get = OBJECTS.get
    while pos < end:
        spec = get(body[pos])
        if spec is None or spec[0] != _NUM:
            break
        _, name, length, signed, factor, decimals = spec
        start = pos + 1
        stop = start + length
        if stop > end:
            break  # parse_objects says what is wrong
        raw = int.from_bytes(body[start:stop], "little", signed=signed)
        metrics[name] = raw if factor == 1 else round(raw * factor, decimals)
        count += 1
        pos = stop
    else:
        if len(metrics) == count:
            return metrics, {}
    values = parse_objects(body)
    return ({k: v for k, v in values.items() if type(v) is not str},
            {k: v for k, v in values.items() if type(v) is str})


def parse_objects(body: bytes) -> dict[str, Any]:
    """The objects of a (decrypted) payload -> {name: value} in order, repeated names numbered; raises
    PayloadError for a truncated object."""
    names: list[str] = []
    values: list[Any] = []
    end = len(body)
    pos = 0
    objects = OBJECTS
    while pos < end:
        oid = body[pos]
        spec = objects.get(oid)
        if spec is None:
            break  # unknown id: its length is unknown, so nothing after it can be read
        kind, name, length, signed, factor, decimals = spec
        start = pos + 1
        if length == 0:  # text, raw, command: a length byte first
            if start >= end:
                raise PayloadError(f"BTHome: object 0x{oid:02x} at byte {pos} lacks its length byte")
            length = (body[start] & 0x1F) + 1 if kind == _COMMAND else body[start]
            start += 1
        stop = start + length
        if stop > end:
            raise PayloadError(f"BTHome: object 0x{oid:02x} at byte {pos} needs {length} bytes, {end - start} left")
        detail: tuple[str, Any] | None = None  # an event's steps or arguments, after the event
        if kind == _NUM:
            raw = int.from_bytes(body[start:stop], "little", signed=signed)
            value: Any = raw if factor == 1 else round(raw * factor, decimals)
        elif kind == _BIN:
            value = body[start] != 0
        elif kind == _BUTTON:
            value = BUTTON_EVENTS.get(body[start])
        elif kind == _DIMMER:
            value = DIMMER_EVENTS.get(body[start])
            if value is not None:
                detail = (name + "_steps", body[start + 1])
        elif kind == _COMMAND:
            value = COMMAND_EVENTS.get(body[start])
            if value is not None and length > 1:
                detail = (name + "_args", body[start + 1:stop].hex())
        elif kind == _TEXT:
            value = body[start:stop].decode("utf-8", errors="replace")
        elif kind == _RAW:
            value = body[start:stop].hex()
        else:  # firmware version: bytes in reverse, dotted
            value = ".".join(str(b) for b in body[start:stop][::-1])
        pos = stop
        if value is not None:
            names.append(name)
            values.append(value)
            if detail is not None:
                names.append(detail[0])
                values.append(detail[1])
    if len(set(names)) == len(names):
        return dict(zip(names, values, strict=True))
    return _numbered(names, values)


def _numbered(names: list[str], values: list[Any]) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for name in names:
        totals[name] = totals.get(name, 0) + 1
    seen: dict[str, int] = {}
    out: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        if totals[name] == 1:
            out[name] = value
        else:
            n = seen[name] = seen.get(name, 0) + 1
            out[f"{name}_{n}"] = value
    return out
