"""Advertisement payloads as the sensors' firmwares build them (the inverse of the gateway's decoders).

Written from the format documents (bthome.io, docs.ruuvi.com, the ATC/pvvx READMEs), independently of the
gateway's code: tests decode what these encode.
"""

from __future__ import annotations

import struct

BTHOME_UUID = 0xFCD2
ENVIRONMENTAL_SENSING_UUID = 0x181A
RUUVI_COMPANY = 0x0499


def mac_bytes(mac: str) -> bytes:
    """`A4:C1:38:8D:18:B2` -> its 6 bytes in display order."""
    return bytes.fromhex(mac.replace(":", "").replace("-", ""))


def bthome_objects(*, packet_id: int | None = None, battery: int | None = None, temperature: float | None = None,
                   humidity: float | None = None, co2: int | None = None) -> bytes:
    out = bytearray()
    if packet_id is not None:
        out += bytes((0x00, packet_id & 0xFF))
    if battery is not None:
        out += bytes((0x01, max(0, min(100, battery))))
    if temperature is not None:
        out += b"\x02" + struct.pack("<h", round(temperature * 100))
    if humidity is not None:
        out += b"\x03" + struct.pack("<H", round(humidity * 100))
    if co2 is not None:
        out += b"\x12" + struct.pack("<H", co2)
    return bytes(out)


def bthome_service_data(objects: bytes, *, mac: str, bindkey: bytes | None = None, counter: int = 0,
                        trigger_based: bool = False) -> bytes:
    """The service data of UUID 0xFCD2 (without the UUID): plain, or AES-CCM encrypted with `bindkey`."""
    info = 0x40 | (0x04 if trigger_based else 0)
    if bindkey is None:
        return bytes((info,)) + objects
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    info |= 0x01
    counter_bytes = struct.pack("<I", counter & 0xFFFFFFFF)
    nonce = mac_bytes(mac) + struct.pack("<H", BTHOME_UUID) + bytes((info,)) + counter_bytes
    sealed = AESCCM(bindkey, tag_length=4).encrypt(nonce, objects, None)
    return bytes((info,)) + sealed[:-4] + counter_bytes + sealed[-4:]


def ruuvi_df5(*, temperature: float, humidity: float, pressure_hpa: float, acceleration: tuple[float, float, float],
              battery_v: float, tx_power: int, movement: int, sequence: int, mac: str) -> bytes:
    """Ruuvi data format 5 (RAWv2): the manufacturer data after the company id."""
    power = (round(battery_v * 1000) - 1600) << 5 | (tx_power + 40) // 2
    ax, ay, az = (round(a * 1000) for a in acceleration)
    return struct.pack(">BhHHhhhHBH", 5, round(temperature / 0.005), round(humidity / 0.0025),
                       round(pressure_hpa * 100) - 50000, ax, ay, az, power, movement & 0xFF,
                       sequence & 0xFFFF) + mac_bytes(mac)


def atc1441(*, mac: str, temperature: float, humidity: int, battery: int, battery_mv: int, counter: int) -> bytes:
    """ATC1441 custom format: service data of UUID 0x181A (13 bytes)."""
    return mac_bytes(mac) + struct.pack(">hBBHB", round(temperature * 10), humidity, battery, battery_mv,
                                        counter & 0xFF)


def pvvx_custom(*, mac: str, temperature: float, humidity: float, battery_mv: int, battery: int, counter: int,
                flags: int = 0) -> bytes:
    """pvvx custom format: service data of UUID 0x181A (15 bytes)."""
    return mac_bytes(mac)[::-1] + struct.pack("<hHHBBB", round(temperature * 100), round(humidity * 100),
                                              battery_mv, battery, counter & 0xFF, flags)


def pvvx_encrypted(*, mac: str, bindkey: bytes, temperature: float, humidity: float, battery: int, counter: int,
                   flags: int = 0) -> bytes:
    """pvvx encrypted custom format: counter, AES-CCM ciphertext, 4-byte MIC (11 bytes)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    counter &= 0xFF
    plain = struct.pack("<hHBB", round(temperature * 100), round(humidity * 100), battery, flags)
    nonce = mac_bytes(mac)[::-1] + bytes((0x0E, 0x16, 0x1A, 0x18, counter))
    return bytes((counter,)) + AESCCM(bindkey, tag_length=4).encrypt(nonce, plain, b"\x11")


def ad_structures(*, service_data: dict[int, bytes] | None = None, manufacturer_data: dict[int, bytes] | None = None,
                  local_name: str | None = None, flags: int = 0x06) -> bytes:
    """A raw advertisement: flags, then each service data / manufacturer data / name as an AD structure."""
    out = bytearray((2, 0x01, flags))
    for uuid, data in (service_data or {}).items():
        out += bytes((len(data) + 3, 0x16)) + struct.pack("<H", uuid) + data
    for company, data in (manufacturer_data or {}).items():
        out += bytes((len(data) + 3, 0xFF)) + struct.pack("<H", company) + data
    if local_name:
        name = local_name.encode()
        out += bytes((len(name) + 1, 0x09)) + name
    return bytes(out)
