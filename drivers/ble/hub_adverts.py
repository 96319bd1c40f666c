"""Adverts of the configured BLE devices, by MAC: what the scanner and the hub demultiplexer decode with.

`BleAdvertDecoder(devices)` holds one `DeviceAdvertDecoder` per configured device that advertises a format.
The gateway builds one and gives the same instance to its own scanner and to the hub demultiplexer, so the
state that keeps repeats and replays out is shared: a beacon heard directly and relayed by a hub is stored
once.
"""

from __future__ import annotations

from collections.abc import Iterable

from drivers.ble.ad import parse_advertisement
from drivers.ble.formats import BleDeviceConfig, DeviceAdvertDecoder, normalize_mac
from gateway.core.errors import PayloadError
from gateway.core.models import Reading


class BleAdvertDecoder:
    def __init__(self, devices: Iterable[BleDeviceConfig]) -> None:
        self._by_mac: dict[str, DeviceAdvertDecoder] = {}
        for device in devices:
            if device.format is not None:
                decoder = DeviceAdvertDecoder(device)
                self._by_mac[decoder.mac] = decoder

    def __len__(self) -> int:
        return len(self._by_mac)

    def devices(self) -> list[DeviceAdvertDecoder]:
        return list(self._by_mac.values())

    def lookup(self, mac: str) -> DeviceAdvertDecoder | None:
        """The configured device with this MAC (any case, `:` or `-` separated), None for any other."""
        decoder = self._by_mac.get(mac)
        if decoder is None and mac:
            try:
                decoder = self._by_mac.get(normalize_mac(mac))
            except ValueError:
                return None
        return decoder

    def is_configured(self, mac: str) -> bool:
        """Tells an unmapped MAC from a configured one whose advert `decode_raw` dropped as a repeat (both None)."""
        return self.lookup(mac) is not None

    def configured_device(self, mac: str) -> str | None:
        """The id of the device configured with this MAC (None: an unmapped advertiser)."""
        decoder = self.lookup(mac)
        return decoder.device_id if decoder is not None else None

    def decode_raw(self, mac: str, adv: bytes, received_at: float) -> Reading | None:
        """A raw advertisement (AD structures) heard from `mac` -> the Reading of the configured device.

        None when the MAC is not configured, and also when the advert is nothing new for a configured device
        (a repeat, an older packet id, within its minimum interval): `configured_device` tells the two apart.
        Raises PayloadError (the quarantine reason) when it is malformed, undecryptable or replayed.
        """
        decoder = self.lookup(mac)
        if decoder is None:
            return None
        payload = decoder.payload_of(parse_advertisement(adv))
        if payload is None:
            raise PayloadError(f"no {decoder.format} data in the advertisement of {decoder.mac}")
        return decoder.decode(payload, received_at)
