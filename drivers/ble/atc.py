"""ATC1441 and pvvx custom formats of the Xiaomi LYWSD03MMC custom firmwares (service data 0x181A). No I/O.

The layout is told by the service data's length (after the UUID):
* 13 bytes, ATC1441: MAC (display order), int16 BE temperature x0.1, uint8 humidity %, uint8 battery %,
  uint16 BE battery mV, uint8 frame counter;
* 15 bytes, pvvx custom: MAC (reversed), int16 LE temperature x0.01, uint16 LE humidity x0.01, uint16 LE
  battery mV, uint8 battery %, uint8 counter, uint8 flags;
* 11 bytes, pvvx encrypted: counter, 6 bytes of AES-CCM ciphertext (<hHBB: temperature x0.01, humidity x0.01,
  battery %, flags), 4-byte MIC; associated data 0x11, nonce = MAC (reversed) + the first 5 bytes of the AD
  structure (length 0x0e, type 0x16, UUID 1a 18, counter).
(Current pvvx firmware sends BTHome v2 instead: configure such a sensor as format "bthome".)
"""

from __future__ import annotations

import struct
from typing import Any

from gateway.core.errors import PayloadError

ATC1441_SIZE = 13
PVVX_SIZE = 15
PVVX_ENCRYPTED_SIZE = 11

_ATC1441 = struct.Struct(">6shBBHB")
_PVVX = struct.Struct("<6shHHBBB")
_PVVX_PLAIN = struct.Struct("<hHBB")
PVVX_AAD = b"\x11"


def decode_plain(data: bytes) -> dict[str, Any]:
    """A plain ATC1441 or pvvx custom advertisement -> values (mac, counter included)."""
    if len(data) == ATC1441_SIZE:
        mac, t, h, battery, mv, counter = _ATC1441.unpack(data)
        return {"temperature": t / 10, "humidity": h, "battery": battery, "battery_voltage": mv / 1000,
                "counter": counter, "mac": mac.hex(":").upper()}
    if len(data) == PVVX_SIZE:
        mac, t, h, mv, battery, counter, flags = _PVVX.unpack(data)
        return {"temperature": t / 100, "humidity": h / 100, "battery_voltage": mv / 1000, "battery": battery,
                "counter": counter, "flags": flags, "mac": mac[::-1].hex(":").upper()}
    raise PayloadError(f"ATC/pvvx: service data of {len(data)} bytes (13: ATC1441, 15: pvvx, 11: pvvx encrypted)")


def pvvx_nonce(mac: bytes, data: bytes) -> bytes:
    """`mac` in display order; `data` the encrypted service data (its first byte is the counter)."""
    return mac[::-1] + bytes((len(data) + 3, 0x16, 0x1A, 0x18, data[0]))


def decode_decrypted(plain: bytes, counter: int) -> dict[str, Any]:
    if len(plain) != _PVVX_PLAIN.size:
        raise PayloadError(f"pvvx: decrypted payload of {len(plain)} bytes, {_PVVX_PLAIN.size} expected")
    t, h, battery, flags = _PVVX_PLAIN.unpack(plain)
    return {"temperature": t / 100, "humidity": h / 100, "battery": battery, "flags": flags, "counter": counter}
