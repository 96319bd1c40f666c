"""The advertisement formats a configured BLE device can speak, and the decoding of one device's adverts.

`DeviceAdvertDecoder` is the small state machine per configured device (DESIGN principle 6: no I/O): it
finds its format's payload in an advertisement, drops what must not be stored twice (the same payload again,
an older or repeated BTHome packet id, a reading sooner than the device's minimum interval), refuses replayed
or decreasing encryption counters, decrypts, decodes, and makes the Reading. The scanner and the hub
demultiplexer share one instance per device, so a beacon heard both ways is stored once.

Outcomes: a Reading (store it), None (nothing new: a repeat, throttled, or no values), or PayloadError (the
quarantine reason: malformed, undecryptable, replayed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from drivers.ble import atc, bthome, ruuvi
from drivers.ble.ad import COMPANY_RUUVI, UUID_BTHOME, UUID_ENVIRONMENTAL_SENSING, Advertisement, uuid128_of
from drivers.ble.aes_ccm import AesCcm, CryptographyCcm, InvalidTag
from gateway.core.errors import PayloadError
from gateway.core.models import MetricValue, Reading

AdvertFormat = Literal["bthome", "ruuvi", "atc", "pvvx"]


@dataclass(frozen=True, slots=True)
class FormatSpec:
    source: Literal["service", "manufacturer"]
    key: int  # 16-bit service UUID or company id
    encryption: bool  # can carry encrypted payloads (a bindkey is accepted)


FORMATS: dict[str, FormatSpec] = {
    "bthome": FormatSpec("service", UUID_BTHOME, True),
    "ruuvi": FormatSpec("manufacturer", COMPANY_RUUVI, False),
    "atc": FormatSpec("service", UUID_ENVIRONMENTAL_SENSING, True),
    "pvvx": FormatSpec("service", UUID_ENVIRONMENTAL_SENSING, True),
}

PACKET_ID_WINDOW_S = 4.0  # bthome-ble's rule: within this, a packet id not 1..63 ahead is a repeat or older
COUNTER_RESTART_BELOW = 100  # an encryption counter restarting below this (battery change, wrap) is accepted
PVVX_COUNTER_WINDOW_S = 300.0
# BTHome device-info byte: version (bits 5-7), MAC included (bit 1), encrypted (bit 0); 2, no MAC, encrypted
_INFO_CHECKED = 0xE3
_ENCRYPTED_NO_MAC = 0x41  # pvvx's 8-bit counter is compared only with one accepted this recently


class BleDeviceConfig(Protocol):
    """What the decoders need of a configured BLE device (gateway/settings_ble.py's model has it)."""

    @property
    def id(self) -> str: ...
    @property
    def mac(self) -> str: ...
    @property
    def format(self) -> str | None: ...
    @property
    def bindkey(self) -> str | None: ...
    @property
    def min_interval_seconds(self) -> float: ...
    @property
    def unchanged_repeat_seconds(self) -> float: ...


def normalize_mac(mac: str) -> str:
    """`a4c1388d18b2`, `a4-c1-...` or `A4:C1:...` -> `A4:C1:38:8D:18:B2`; ValueError for anything else."""
    digits = mac.replace(":", "").replace("-", "").upper()
    if len(digits) != 12 or any(c not in "0123456789ABCDEF" for c in digits):
        raise ValueError(f"not a MAC address: {mac!r}")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def make_cipher(bindkey: bytes) -> AesCcm | CryptographyCcm:
    """OpenSSL's AES-CCM through ctypes (0.2 MB); `cryptography`'s (6.6 MB to import) where no libcrypto is found."""
    try:
        return AesCcm(bindkey)
    except ImportError:
        return CryptographyCcm(bindkey)


Values = tuple[dict[str, MetricValue], dict[str, Any]]  # numbers and booleans (metrics); text (extra)


def split_values(values: dict[str, Any], text: tuple[str, ...] = ("mac", "mac_lsb24")) -> Values:
    """A decoder's values -> (metrics, extra): the `text` keys (MACs) go beside the metrics; None (not
    available) is left out. Reuses `values` as the metrics (the per-advert path allocates no second dict)."""
    extra = {}
    for key in text:
        value = values.pop(key, None)
        if value is not None:
            extra[key] = value
    if None in values.values():
        values = {k: v for k, v in values.items() if v is not None}
    return values, extra


class DeviceAdvertDecoder:
    """One configured device's adverts -> Readings, with the state that keeps repeats and replays out."""

    def __init__(self, device: BleDeviceConfig) -> None:
        if device.format not in FORMATS:
            raise ValueError(f"device {device.id}: unknown advertisement format {device.format!r}")
        self.device_id = device.id
        self.mac = normalize_mac(device.mac)
        self.format: str = device.format
        self.spec = FORMATS[device.format]
        self.service_uuid = uuid128_of(self.spec.key) if self.spec.source == "service" else None
        self._mac_bytes = bytes.fromhex(self.mac.replace(":", ""))
        self._bthome_nonce_prefix = self._mac_bytes + bthome.BTHOME_UUID_LE
        self._cipher = make_cipher(bytes.fromhex(device.bindkey)) if device.bindkey else None
        self._min_interval = device.min_interval_seconds
        self._repeat_unchanged = device.unchanged_repeat_seconds
        self._decode: Callable[[bytes, float], Values | None] = {
            "bthome": self._bthome, "ruuvi": self._ruuvi, "atc": self._atc, "pvvx": self._atc,
        }[device.format]
        # state
        self._stored_payload: bytes | None = None
        self._stored_at: float | None = None
        self._authentic_payload: bytes | None = None  # the last encrypted payload that decrypted
        self._counter: int | None = None
        self._counter_at = 0.0
        self._packet_id: int | None = None
        self._packet_at = 0.0
        self.repeats = 0  # adverts dropped as not new (repeat, older packet id, min interval)
        self.heard_at: float | None = None  # when a payload of its format was last heard (scanner or hub)

    # --- finding the payload ----------------------------------------------------------------------

    def payload_of(self, adv: Advertisement) -> bytes | None:
        spec = self.spec
        table = adv.service_data if spec.source == "service" else adv.manufacturer_data
        return table.get(spec.key)

    def payload_of_bleak(self, service_data: dict[str, bytes], manufacturer_data: dict[int, bytes]) -> bytes | None:
        """The same from bleak's AdvertisementData dictionaries (128-bit UUID strings, company ids)."""
        if self.service_uuid is not None:
            return service_data.get(self.service_uuid)
        return manufacturer_data.get(self.spec.key)

    # --- decoding ---------------------------------------------------------------------------------

    def decode(self, payload: bytes, received_at: float) -> Reading | None:
        """One payload of this device's format -> a Reading to store, None, or PayloadError.

        `heard_at` moves for every payload not refused (a repeat too): a forged or replayed advert does not
        keep a device online."""
        if (payload == self._stored_payload and self._stored_at is not None
                and received_at - self._stored_at < self._repeat_unchanged):
            self.heard_at = received_at
            self._repeat()
            return None
        values = self._decode(payload, received_at)
        self.heard_at = received_at
        if values is None:
            return None
        metrics, extra = values
        if not metrics and not extra:
            return None
        if self._stored_at is not None and received_at - self._stored_at < self._min_interval:
            self._repeat()
            return None
        self._stored_payload = payload
        self._stored_at = received_at
        return Reading(self.device_id, received_at, metrics, received_at, extra)

    def _repeat(self) -> None:
        self.repeats += 1

    def _bthome(self, payload: bytes, received_at: float) -> Values | None:
        encrypted = False
        if payload[:1] == b"\x40" and self._cipher is None:  # plain, no MAC inside: the common case
            body: bytes | None = payload[1:]
        elif self._cipher is not None and len(payload) >= 11 and payload[0] & _INFO_CHECKED == _ENCRYPTED_NO_MAC:
            # encrypted, no MAC inside: the common encrypted case, read in place (no frame object)
            body = self._decrypt_bthome(payload, self._bthome_nonce_prefix, 1)
            encrypted = True
        else:
            frame = bthome.split_frame(payload)
            if frame.encrypted:
                prefix = self._bthome_nonce_prefix if frame.mac is None else frame.mac + bthome.BTHOME_UUID_LE
                body = self._decrypt_bthome(payload, prefix, 1 if frame.mac is None else 7)
                encrypted = True
            elif self._cipher is not None:
                raise PayloadError("BTHome: unencrypted advertisement from a device with a bindkey "
                                   "(downgrade refused)")
            else:
                body = frame.body
        if body is None:
            return None
        values = bthome.decode_objects(body)
        packet_id = values[0].get("packet_id")
        if isinstance(packet_id, int):
            if (self._packet_id is not None and received_at - self._packet_at <= PACKET_ID_WINDOW_S
                    and not 0 < (packet_id - self._packet_id) % 256 < 64):
                self._repeat()
                return None
            self._packet_id = packet_id
            self._packet_at = received_at
        if encrypted and self._counter is not None:  # the decryption set it
            values[0]["encryption_counter"] = self._counter
        return values

    def _decrypt_bthome(self, payload: bytes, nonce_prefix: bytes, start: int) -> bytes | None:
        """An encrypted BTHome frame whose ciphertext starts at `start` (after the device-info byte, and the MAC
        when inside) -> its objects; None for the device's last authentic advert again. `nonce_prefix`: the
        MAC (display order) and the UUID. The frame's length was checked by the caller or `split_frame`."""
        if self._cipher is None:
            raise PayloadError("BTHome: encrypted advertisement but no bindkey configured for this device")
        if payload == self._authentic_payload:
            self._repeat()  # the device repeats its last advertisement: nothing new, nothing replayed
            return None
        counter_bytes = payload[-8:-4]
        counter = int.from_bytes(counter_bytes, "little")
        last = self._counter
        if last is not None and counter <= last and not counter < COUNTER_RESTART_BELOW <= last:
            raise PayloadError(f"BTHome: encryption counter {counter} is not above the last one, {last} "
                               "(replayed or decreasing: refused)")
        body = self._aes_ccm(self._cipher, nonce_prefix + payload[:1] + counter_bytes, payload[start:-8],
                             payload[-4:], None, "BTHome")
        self._counter = counter
        self._authentic_payload = payload
        return body

    def _ruuvi(self, payload: bytes, received_at: float) -> Values | None:
        return split_values(ruuvi.decode_ruuvi(payload))

    def _atc(self, payload: bytes, received_at: float) -> Values | None:
        if len(payload) != atc.PVVX_ENCRYPTED_SIZE:
            if self._cipher is not None:
                raise PayloadError("pvvx: unencrypted advertisement from a device with a bindkey (downgrade refused)")
            return split_values(atc.decode_plain(payload))
        if self._cipher is None:
            raise PayloadError("pvvx: encrypted advertisement but no bindkey configured for this device")
        if payload == self._authentic_payload:
            self._repeat()
            return None
        counter = payload[0]
        last = self._counter
        if last is not None and received_at - self._counter_at <= PVVX_COUNTER_WINDOW_S \
                and not 0 < (counter - last) % 256 < 128:
            raise PayloadError(f"pvvx: counter {counter} is not ahead of the last one, {last} "
                               "(replayed or decreasing: refused)")
        plain = self._aes_ccm(self._cipher, atc.pvvx_nonce(self._mac_bytes, payload), payload[1:-4], payload[-4:],
                              atc.PVVX_AAD, "pvvx")
        self._counter = counter
        self._counter_at = received_at
        self._authentic_payload = payload
        return split_values(atc.decode_decrypted(plain, counter))

    @staticmethod
    def _aes_ccm(cipher: AesCcm | CryptographyCcm, nonce: bytes, ciphertext: bytes, mic: bytes, aad: bytes | None,
                 name: str) -> bytes:
        try:
            return cipher.decrypt(nonce, ciphertext, mic, aad)
        except InvalidTag:
            raise PayloadError(f"{name}: decryption failed (MIC mismatch: wrong bindkey, or forged)") from None
