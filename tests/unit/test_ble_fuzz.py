"""Random bytes never crash the BLE decoders: each advert decodes, is dropped, or is refused (PayloadError,
the quarantine reason), whatever it holds and in whichever state the device's decoder is."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.ble.ad import parse_advertisement
from drivers.ble.hub_adverts import BleAdvertDecoder
from gateway.core.errors import PayloadError

MAC = "A4:C1:38:8D:18:B2"
KEY = "231d39c1d7cc1ab1aee224cd096db932"


@dataclass(frozen=True)
class Device:
    id: str
    mac: str
    format: str
    bindkey: str | None = None
    min_interval_seconds: float = 0.0
    unchanged_repeat_seconds: float = 600.0


def _decoders() -> dict[str, BleAdvertDecoder]:
    return {
        name: BleAdvertDecoder([Device("D", MAC, fmt, key)])
        for name, (fmt, key) in {"bthome": ("bthome", None), "bthome-enc": ("bthome", KEY), "ruuvi": ("ruuvi", None),
                                 "atc": ("atc", None), "pvvx-enc": ("pvvx", KEY)}.items()
    }


# An AD structure of a type the decoders read, with random contents: reaches the format decoders far more often
# than wholly random bytes would.
_uuid = st.sampled_from([b"\xd2\xfc", b"\x1a\x18", b"\x99\x04"])
_structure = st.tuples(st.sampled_from([0x16, 0xFF, 0x09, 0x01]), _uuid, st.binary(max_size=40)).map(
    lambda t: bytes((len(t[1]) + len(t[2]) + 1, t[0])) + t[1] + t[2]
)
_advert = st.one_of(st.binary(max_size=62), st.lists(_structure, max_size=3).map(b"".join),
                    st.tuples(st.lists(_structure, max_size=2).map(b"".join), st.binary(max_size=8)).map(b"".join))


@settings(max_examples=250, deadline=None)
@given(adverts=st.lists(_advert, min_size=1, max_size=4))
def test_random_adverts_decode_or_are_refused_with_a_reason(adverts: list[bytes]) -> None:
    for decoder in _decoders().values():
        for i, adv in enumerate(adverts):
            try:
                reading = decoder.decode_raw(MAC, adv, 1_763_800_000.0 + i)
            except PayloadError as exc:
                assert str(exc)
            else:
                assert reading is None or reading.device_id == "D"


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=48), info=st.integers(0, 255))
def test_random_payloads_of_each_format_decode_or_are_refused(payload: bytes, info: int) -> None:
    """Straight at the payload decoders, BTHome with every device-info byte."""
    for name, decoder in _decoders().items():
        device = decoder.lookup(MAC)
        assert device is not None
        data = bytes((info,)) + payload if name.startswith("bthome") else payload
        try:
            device.decode(data, 1_763_800_000.0)
        except PayloadError as exc:
            assert str(exc)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_ad_parser_reads_or_refuses_any_bytes(data: bytes) -> None:
    try:
        parse_advertisement(data)
    except PayloadError as exc:
        assert "AD structure" in str(exc) or "shorter" in str(exc)
