"""The AD structures of a raw BLE advertisement (Core spec vol 3 part C section 11), parsed without I/O.

An advertisement is a run of `length, type, data[length - 1]` structures. We keep what the decoders need:
16-bit service data (type 0x16, keyed by the UUID as an int), manufacturer data (type 0xFF, keyed by the
company id), the local name (0x08 shortened / 0x09 complete) and the flags byte (0x01). A zero length byte
ends the significant part (the rest is padding, per the spec); a structure that runs past the end raises
PayloadError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.core.errors import PayloadError

AD_FLAGS = 0x01
AD_SHORT_NAME = 0x08
AD_COMPLETE_NAME = 0x09
AD_SERVICE_DATA_16 = 0x16
AD_MANUFACTURER_DATA = 0xFF

UUID_BTHOME = 0xFCD2
UUID_ENVIRONMENTAL_SENSING = 0x181A  # ATC1441 / pvvx custom formats
COMPANY_RUUVI = 0x0499

BLUETOOTH_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


@dataclass(slots=True)
class Advertisement:
    """What one advertisement carried (a format's payload is looked up here by UUID or company id)."""

    service_data: dict[int, bytes] = field(default_factory=dict)
    manufacturer_data: dict[int, bytes] = field(default_factory=dict)
    local_name: str | None = None
    flags: int | None = None


def parse_advertisement(data: bytes) -> Advertisement:
    """Raw AD structures -> Advertisement; raises PayloadError for a structure that does not fit."""
    adv = Advertisement()
    pos = 0
    end = len(data)
    while pos < end:
        length = data[pos]
        if length == 0:
            break  # significant part ends; zero padding may follow
        start = pos + 1
        stop = start + length
        if stop > end:
            raise PayloadError(f"AD structure at byte {pos} announces {length} bytes, {end - start} left")
        ad_type = data[start]
        body = data[start + 1:stop]
        if ad_type == AD_SERVICE_DATA_16:
            if len(body) < 2:
                raise PayloadError(f"service data at byte {pos} is shorter than its 16-bit UUID")
            adv.service_data[body[0] | body[1] << 8] = body[2:]
        elif ad_type == AD_MANUFACTURER_DATA:
            if len(body) < 2:
                raise PayloadError(f"manufacturer data at byte {pos} is shorter than its company id")
            adv.manufacturer_data[body[0] | body[1] << 8] = body[2:]
        elif ad_type in (AD_COMPLETE_NAME, AD_SHORT_NAME):
            if adv.local_name is None or ad_type == AD_COMPLETE_NAME:
                adv.local_name = body.decode("utf-8", errors="replace")
        elif ad_type == AD_FLAGS and body:
            adv.flags = body[0]
        pos = stop
    return adv


def uuid16_of(uuid: str) -> int | None:
    """A 16-bit UUID from its 128-bit form on the Bluetooth base UUID (what bleak's service_data keys are)."""
    if len(uuid) == 36 and uuid.startswith("0000") and uuid.endswith(BLUETOOTH_BASE_UUID_SUFFIX):
        try:
            return int(uuid[4:8], 16)
        except ValueError:
            return None
    return None


def uuid128_of(uuid16: int) -> str:
    return f"0000{uuid16:04x}{BLUETOOTH_BASE_UUID_SUFFIX}"
