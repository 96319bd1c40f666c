"""The `[ble]` section: the adapter, scanning, and the BLE devices by MAC (drivers/ble reads these models).

Each `[[ble.devices]]` is a logical device of its own (its id is used like any other device's): it advertises
a `format` (bthome | ruuvi | atc | pvvx, with a 32-hex-digit `bindkey` when encrypted), and/or is connected
to read or subscribe to GATT characteristics.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"  # the same rule as gateway.settings
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?[0-9A-Fa-f]{2}){5}$")
_UUID16 = re.compile(r"^[0-9A-Fa-f]{4}$")
_UUID128 = re.compile(r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")

# the driver kind of a BLE device, by advertisement format (None: GATT only); drivers/registry.py knows them
KIND_OF_FORMAT = {"bthome": "ble-bthome", "ruuvi": "ble-ruuvi", "atc": "ble-atc", "pvvx": "ble-pvvx", None: "ble-gatt"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GattCharacteristicSettings(_Strict):
    """One characteristic: read every `interval_seconds`, or subscribed to (notify); its value decoded as
    a number (`type`, little-endian, times `scale`) and stored as `metric`."""

    uuid: str
    metric: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")]
    type: Literal["uint8", "int8", "uint16", "int16", "uint24", "int24", "uint32", "int32", "float32"] = "int16"
    scale: float = 1.0
    mode: Literal["read", "notify"] = "read"
    interval_seconds: Annotated[float, Field(gt=0)] = 60.0

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if _UUID16.match(value):
            return f"0000{value.lower()}-0000-1000-8000-00805f9b34fb"
        if _UUID128.match(value):
            return value.lower()
        raise ValueError("a characteristic UUID is 4 hex digits (16-bit) or the 36-character form")


class BleDeviceSettings(_Strict):
    id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    name: str = ""
    room: str = ""
    mac: str
    format: Literal["bthome", "ruuvi", "atc", "pvvx"] | None = None
    bindkey: str | None = None  # 32 hex digits: the AES-CCM key of an encrypted BTHome or pvvx sensor
    # At most one reading per this many seconds; adverts between are dropped (not stored).
    min_interval_seconds: Annotated[float, Field(ge=0)] = 0.0
    # The same advertisement again is not stored, unless this long has passed since it was (a heartbeat
    # for a sensor whose values do not change; encrypted adverts repeat only with a new counter).
    unchanged_repeat_seconds: Annotated[float, Field(gt=0)] = 600.0
    gatt: list[GattCharacteristicSettings] = Field(default_factory=list)

    @field_validator("mac")
    @classmethod
    def _mac(cls, value: str) -> str:
        if not _MAC.match(value):
            raise ValueError("a MAC address is six hex pairs, e.g. A4:C1:38:8D:18:B2")
        digits = value.replace(":", "").replace("-", "").upper()
        return ":".join(digits[i:i + 2] for i in range(0, 12, 2))

    @field_validator("bindkey")
    @classmethod
    def _bindkey(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9A-Fa-f]{32}", value):
            raise ValueError("a bindkey is 32 hex digits (16 bytes)")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _something_to_read(self) -> BleDeviceSettings:
        if self.format is None and not self.gatt:
            raise ValueError("give the advertisement format, GATT characteristics, or both")
        if self.bindkey is not None and self.format not in ("bthome", "atc", "pvvx"):
            raise ValueError("a bindkey is for an encrypted BTHome or pvvx sensor (format bthome, atc or pvvx)")
        return self

    @property
    def kind(self) -> str:
        return KIND_OF_FORMAT[self.format]


class BleSection(_Strict):
    # false: the gateway's own adapter is not used; BLE devices are heard only through hubs (no scanner, no
    # GATT, bleak not even imported: ~5.5 MB less RSS on Linux).
    radio: bool = True
    # The Bluetooth adapter (BlueZ name). The BLE link runs only when BLE devices are configured.
    adapter: str = "hci0"
    # passive: listen only (BlueZ advertisement monitor, needs BlueZ >= 5.56 with experimental features);
    # the scanner falls back to active scanning, once logged, where BlueZ refuses it.
    scanning_mode: Literal["passive", "active"] = "passive"
    # A scanner that heard nothing at all for this long is restarted (adapters do wedge).
    watchdog_seconds: Annotated[float, Field(gt=0)] = 120.0
    # A configured device not heard for this long goes offline (an event); the next advert brings it back.
    offline_after_seconds: Annotated[float, Field(gt=0)] = 300.0
    # GATT connections at once (adapters manage a few; each connection costs the radio air time).
    max_gatt_connections: Annotated[int, Field(ge=1, le=10)] = 2
    gatt_timeout_seconds: Annotated[float, Field(gt=0, le=120)] = 20.0
    reconnect_max_seconds: Annotated[float, Field(ge=1, le=3600)] = 300.0
    devices: list[BleDeviceSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _gatt_needs_the_radio(self) -> BleSection:
        if not self.radio and any(d.gatt for d in self.devices):
            raise ValueError("GATT devices need the gateway's own radio (radio = true)")
        return self

    @field_validator("devices")
    @classmethod
    def _unique_macs(cls, value: list[BleDeviceSettings]) -> list[BleDeviceSettings]:
        macs = [d.mac for d in value]
        dupes = sorted({m for m in macs if macs.count(m) > 1})
        if dupes:
            raise ValueError(f"a MAC belongs to one BLE device, repeated: {', '.join(dupes)}")
        return value

    def kinds(self) -> dict[str, str]:
        """Device id -> driver kind, for the device registry."""
        return {d.id: d.kind for d in self.devices}
