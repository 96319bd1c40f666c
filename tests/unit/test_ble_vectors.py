"""Every BLE vector (tests/vectors, copied from the team's shared vectors): BTHome v2, Ruuvi, ATC/pvvx.

Positive vectors decode to the expected values; negative ones are refused with a reason (PayloadError) or
decode to nothing; the stateful sequences (packet id, encryption counter) go through one device's decoder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from drivers.ble import atc, bthome, ruuvi
from drivers.ble.ad import parse_advertisement
from drivers.ble.formats import DeviceAdvertDecoder
from drivers.ble.hub_adverts import BleAdvertDecoder
from gateway.core.errors import PayloadError
from gateway.core.models import Reading

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
T0 = 1_763_800_000.0


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    return data


BTHOME = _load("bthome_v2_vectors.json")
BTHOME_IO = _load("bthome_io_object_examples.json")
RUUVI = _load("ruuvi_vectors.json")
ATC = _load("atc_pvvx_vectors.json")


@dataclass(frozen=True)
class Device:
    id: str = "BLE-1"
    mac: str = "A4:C1:38:8D:18:B2"
    format: str | None = "bthome"
    bindkey: str | None = None
    min_interval_seconds: float = 0.0
    unchanged_repeat_seconds: float = 600.0


def _values(reading: Reading | None) -> dict[str, Any]:
    assert reading is not None
    return {**reading.metrics, **reading.extra}


def _close(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool) or isinstance(expected, str):
        return bool(actual == expected)
    return math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9)


# --- BTHome v2 -------------------------------------------------------------------------------------------

_BTHOME_NAMES = {"event:button": "event:button"}


@pytest.mark.parametrize("vector", BTHOME["vectors"], ids=lambda v: v["name"])
def test_bthome_vector_decodes_to_the_expected_values(vector: dict[str, Any]) -> None:
    device = Device(mac=vector["mac"], bindkey=vector.get("bindkey"))
    decoder = DeviceAdvertDecoder(device)
    values = _values(decoder.decode(bytes.fromhex(vector["service_data_hex"]), T0))
    for key, expected in vector["expected"].items():
        assert key in values, (key, values)
        assert _close(values[key], expected), (key, values[key], expected)


@pytest.mark.parametrize("vector", BTHOME["vectors"], ids=lambda v: v["name"])
def test_bthome_vector_decodes_the_same_from_raw_ad_structures(vector: dict[str, Any]) -> None:
    """The hub's path: `mac` + raw advertisement (flags + service data AD structure) -> the same Reading."""
    service = bytes.fromhex(vector["ad_service_data_with_uuid_hex"])
    adv = bytes.fromhex("020106") + bytes((len(service) + 1, 0x16)) + service
    decoder = BleAdvertDecoder([Device(mac=vector["mac"].lower(), bindkey=vector.get("bindkey"))])
    reading = decoder.decode_raw(vector["mac"], adv, T0)
    direct = DeviceAdvertDecoder(Device(mac=vector["mac"], bindkey=vector.get("bindkey")))
    assert reading == direct.decode(bytes.fromhex(vector["service_data_hex"]), T0)


def _negative(name: str) -> dict[str, Any]:
    return next(v for v in BTHOME["negative_and_stateful"] if v["name"] == name)


@pytest.mark.parametrize("name", ["test_bthome_wrong_object_id", "test_bthome_invalid_button_event"])
def test_bthome_objects_it_cannot_read_give_nothing_to_store(name: str) -> None:
    vector = _negative(name)
    assert vector["expected"] == {}
    assert DeviceAdvertDecoder(Device()).decode(bytes.fromhex(vector["service_data_hex"]), T0) is None


def test_bthome_parsing_stops_at_an_unknown_object_id_keeping_what_came_before() -> None:
    vector = _negative("test_bthome_battery_wrong_object_id_humidity")
    values = _values(DeviceAdvertDecoder(Device()).decode(bytes.fromhex(vector["service_data_hex"]), T0))
    assert values == vector["expected"]


@pytest.mark.parametrize(("name", "reason"), [
    ("test_bthome_invalid_object_payload_data_length", "needs 2 bytes, 1 left"),
    ("test_incorrect_bthome_version", "version 0 not supported"),
    ("test_has_incorrect_version", "version 7 not supported"),
])
def test_bthome_malformed_advertisements_are_refused_with_a_reason(name: str, reason: str) -> None:
    vector = _negative(name)
    with pytest.raises(PayloadError, match=reason):
        DeviceAdvertDecoder(Device()).decode(bytes.fromhex(vector["service_data_hex"]), T0)


def test_bthome_wrong_bindkey_is_refused() -> None:
    vector = _negative("test_bindkey_wrong")
    decoder = DeviceAdvertDecoder(Device(mac=vector["mac"], bindkey=vector["bindkey"]))
    with pytest.raises(PayloadError, match="decryption failed"):
        decoder.decode(bytes.fromhex(vector["service_data_hex"]), T0)


def test_bthome_unencrypted_advert_is_refused_when_a_bindkey_is_configured() -> None:
    vector = _negative("test_encryption_downgrade_fails")
    with pytest.raises(PayloadError, match="downgrade refused"):
        DeviceAdvertDecoder(Device(bindkey=vector["bindkey"])).decode(bytes.fromhex(vector["service_data_hex"]), T0)


def test_bthome_encrypted_advert_without_a_bindkey_is_refused() -> None:
    vector = next(v for v in BTHOME["vectors"] if v["name"] == "test_bindkey_correct")
    with pytest.raises(PayloadError, match="no bindkey"):
        DeviceAdvertDecoder(Device(mac=vector["mac"])).decode(bytes.fromhex(vector["service_data_hex"]), T0)


def test_bthome_decreasing_counter_is_refused_and_the_same_advert_again_is_not_stored_twice() -> None:
    vector = _negative("test_same_encryption_counter / test_decreasing_encryption_counter")
    first, older = (bytes.fromhex(h) for h in vector["sequence"])
    decoder = DeviceAdvertDecoder(Device(mac=vector["mac"], bindkey=vector["bindkey"]))
    assert _values(decoder.decode(first, T0))["encryption_counter"] == 1122867
    assert decoder.decode(first, T0 + 1) is None  # the device repeating itself: nothing new
    assert decoder.decode(first, T0 + 3600) is None  # ...however late: an encrypted repeat is never re-stored
    with pytest.raises(PayloadError, match="replayed or decreasing"):
        decoder.decode(older, T0 + 2)


def test_bthome_increasing_counter_is_accepted() -> None:
    vector = _negative("test_increasing_encryption_counter")
    decoder = DeviceAdvertDecoder(Device(mac=vector["mac"], bindkey=vector["bindkey"]))
    counters = [_values(decoder.decode(bytes.fromhex(h), T0 + i))["encryption_counter"]
                for i, h in enumerate(vector["sequence"])]
    assert counters == [1122867, 1122868]


def test_bthome_counter_wrapping_around_to_zero_is_accepted() -> None:
    vector = _negative("test_reset_encryption_counter")
    top, zero = (bytes.fromhex(h) for h in vector["sequence"])
    decoder = DeviceAdvertDecoder(Device(mac=vector["mac"], bindkey=vector["bindkey"]))
    assert _values(decoder.decode(top, T0))["encryption_counter"] == 4294967295
    assert _values(decoder.decode(zero, T0 + 1))["encryption_counter"] == 0


def test_bthome_older_packet_id_is_not_stored() -> None:
    vector = _negative("test_identical_packet_id")
    newer, older = (bytes.fromhex(h) for h in vector["sequence"])
    decoder = DeviceAdvertDecoder(Device())
    assert _values(decoder.decode(newer, T0)) == {"packet_id": 9}
    assert decoder.decode(older, T0 + 1) is None
    assert decoder.decode(bytes.fromhex("40000a"), T0 + 2) is not None  # the next id is new


def test_bthome_packet_id_is_trusted_again_after_four_seconds_of_silence() -> None:
    decoder = DeviceAdvertDecoder(Device(unchanged_repeat_seconds=1.0))
    assert decoder.decode(bytes.fromhex("400009"), T0) is not None
    assert decoder.decode(bytes.fromhex("400008"), T0 + 5) is not None


def _io_rows() -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for table, entries in BTHOME_IO["tables"].items():
        for row in entries:
            if "_raw_row" in row:
                row = {"Object id": "0x5A", "Example": "5AEAEA", "Result": "-5398"}  # the older page's example
            rows.append((table, row))
    return rows


_EXPECTED_IO_STRINGS = {"0x53": "Hello World!", "0x54": "48656c6c6f20576f726c6421", "0x50": 1684093277}


@pytest.mark.parametrize(("table", "row"), _io_rows(), ids=lambda r: r if isinstance(r, str) else r["Example"])
def test_every_bthome_io_object_id_decodes(table: str, row: dict[str, Any]) -> None:
    example = bytes.fromhex(row["Example"].replace(" ", ""))
    values = bthome.parse_objects(example)
    result = row["Result"]
    if table == "binary_sensor":
        assert list(values.values()) == [example[1] == 1]
    elif table == "event":
        expected_event = row["Event type"].replace(" ", "_")
        if expected_event == "None":
            assert values == {}
        else:
            (_, value), *rest = values.items()
            assert value == expected_event, values
            steps = [v for k, v in rest if not k.endswith("_args")] or [int(v, 16) for _, v in rest]
            if "steps" in result:
                assert steps == [int(result.split()[-2])]
    elif table == "device_info":
        assert list(values.values()) == [int(result) if "." not in result else result]
    elif row["Object id"] in _EXPECTED_IO_STRINGS:
        assert list(values.values()) == [_EXPECTED_IO_STRINGS[row["Object id"]]]
    elif row["Object id"] == "0x64":
        assert list(values.values()) == [2]
    else:
        assert len(values) == 1
        assert _close(next(iter(values.values())), float(result)), (values, result)


def test_the_bthome_object_table_covers_every_object_id_of_the_format_page() -> None:
    ids = {int(row["Object id"], 16) for _, row in _io_rows() if row.get("Object id")}
    assert ids <= set(bthome.OBJECTS), sorted(ids - set(bthome.OBJECTS))


# --- Ruuvi -----------------------------------------------------------------------------------------------

# vector key -> (our metric, factor from the vector's unit to ours)
_RUUVI_KEYS: dict[str, tuple[str, float]] = {
    "temperature_c": ("temperature", 1), "humidity_pct": ("humidity", 1), "pressure_pa": ("pressure", 100),
    "acceleration_x_g": ("acceleration_x", 1), "acceleration_y_g": ("acceleration_y", 1),
    "acceleration_z_g": ("acceleration_z", 1), "acceleration_x_mg": ("acceleration_x", 1000),
    "acceleration_y_mg": ("acceleration_y", 1000), "acceleration_z_mg": ("acceleration_z", 1000),
    "tx_power_dbm": ("tx_power", 1), "battery_v": ("battery_voltage", 1),
    "movement_counter": ("movement_counter", 1), "measurement_sequence": ("measurement_sequence", 1),
    "pm1_0_ugm3": ("pm1", 1), "pm2_5_ugm3": ("pm25", 1), "pm4_0_ugm3": ("pm4", 1), "pm10_0_ugm3": ("pm10", 1),
    "co2_ppm": ("co2", 1), "voc_index": ("voc_index", 1), "nox_index": ("nox_index", 1),
    "luminosity_lux": ("illuminance", 1), "calibration_in_progress": ("calibration_in_progress", 1),
    "mac": ("mac", 1), "mac_lsb24": ("mac_lsb24", 1),
}


def _ruuvi_cases() -> list[tuple[str, dict[str, Any]]]:
    cases = [(f"{fmt}-{v['case']}", v) for fmt in ("df5", "df6", "e1") for v in RUUVI[fmt]]
    return [*cases, ("df5-real-capture", RUUVI["df5_real_capture"])]


def _check_ruuvi(values: dict[str, Any], expected: dict[str, Any], abs_tol: float = 1e-9) -> None:
    for key, want in expected.items():
        if key in ("data_format", "rssi"):
            continue
        name, scale = _RUUVI_KEYS[key]
        got = values[name]
        if want is None or isinstance(want, bool | str):
            assert got == want, (key, got, want)
        else:
            assert math.isclose(got * scale, want, rel_tol=1e-9, abs_tol=abs_tol), (key, got, want)


@pytest.mark.parametrize(("case", "vector"), _ruuvi_cases(), ids=lambda c: c if isinstance(c, str) else "")
def test_ruuvi_vector_decodes_to_the_expected_values(case: str, vector: dict[str, Any]) -> None:
    # ble_monitor's real capture states humidity to 2 decimals (format 5 resolves 0.0025 %)
    abs_tol = 0.005 if case == "df5-real-capture" else 1e-9
    _check_ruuvi(ruuvi.decode_ruuvi(bytes.fromhex(vector["payload_hex"])), vector["expected"], abs_tol)


def test_ruuvi_real_capture_decodes_from_its_raw_advertisement() -> None:
    vector = RUUVI["df5_real_capture"]
    adv = parse_advertisement(bytes.fromhex(vector["ad_data_hex"]))
    _check_ruuvi(ruuvi.decode_ruuvi(adv.manufacturer_data[0x0499]), vector["expected"], abs_tol=0.005)


def test_ruuvi_not_available_values_are_left_out_of_the_reading() -> None:
    invalid = bytes.fromhex(RUUVI["df5"][3]["payload_hex"])
    decoder = DeviceAdvertDecoder(Device(format="ruuvi"))
    assert decoder.decode(invalid, T0) is None  # nothing available: nothing to store
    valid = bytes.fromhex(RUUVI["df5"][0]["payload_hex"])
    reading = decoder.decode(valid, T0)
    assert reading is not None and reading.metrics["temperature"] == 24.3
    assert reading.extra == {"mac": "CB:B8:33:4C:88:4F"}


_DF3 = {  # ruuvitag-sensor tests/decoders/test_df3_decoder.py
    "valid": {"temperature": 26.3, "humidity": 20.5, "pressure": 1027.66, "battery_voltage": 2.899,
              "acceleration_x": -1.0, "acceleration_y": -1.726, "acceleration_z": 0.714},
    "maximum": {"temperature": 127.99, "humidity": 127.5, "pressure": 1155.35, "battery_voltage": 65.535,
                "acceleration_x": 32.767, "acceleration_y": 32.767, "acceleration_z": 32.767},
    "minimum": {"temperature": -127.99, "humidity": 0.0, "pressure": 500.0, "battery_voltage": 0.0,
                "acceleration_x": -32.767, "acceleration_y": -32.767, "acceleration_z": -32.767},
}


@pytest.mark.parametrize("case", sorted(_DF3))
def test_ruuvi_format_3(case: str) -> None:
    values = ruuvi.decode_ruuvi(bytes.fromhex(RUUVI["df3_rawv1_bonus"][case]))
    for key, want in _DF3[case].items():
        assert _close(values[key], want), (key, values[key], want)


@pytest.mark.parametrize(("payload", "reason"), [("", "empty"), ("05", "24 needed"), ("07" + "00" * 23, "0x07")])
def test_ruuvi_malformed(payload: str, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        ruuvi.decode_ruuvi(bytes.fromhex(payload))


# --- ATC1441 / pvvx --------------------------------------------------------------------------------------

_ATC_KEYS = {"temperature_c": "temperature", "humidity_pct": "humidity", "battery_pct": "battery",
             "battery_v": "battery_voltage", "counter": "counter", "mac": "mac", "flags": "flags"}


def _check_atc(values: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, want in expected.items():
        if key in ("format", "rssi") or (key == "mac" and "mac" not in values):  # encrypted: no MAC inside
            continue
        assert _close(values[_ATC_KEYS[key]], want), (key, values, want)


@pytest.mark.parametrize("vector", ATC["vectors"], ids=lambda v: v["name"])
def test_atc_pvvx_vector_decodes_from_its_raw_advertisement(vector: dict[str, Any]) -> None:
    fmt = "atc" if vector["expected"]["format"] == "atc1441" else "pvvx"
    adv = bytes.fromhex(vector["ad_structure_hex"])
    decoder = BleAdvertDecoder([Device(mac=vector["advertiser_address"], format=fmt, bindkey=vector.get("bindkey"))])
    _check_atc(_values(decoder.decode_raw(vector["advertiser_address"], adv, T0)), vector["expected"])


@pytest.mark.parametrize("sample", ATC["extra_samples"], ids=lambda v: v["name"])
def test_pvvx_interface_samples(sample: dict[str, Any]) -> None:
    service_data = parse_advertisement(bytes.fromhex(sample["ad_structure_hex"])).service_data[0x181A]
    _check_atc(atc.decode_plain(service_data), sample["expected_by_spec"])


def test_pvvx_encrypted_replay_and_downgrade_are_refused() -> None:
    vector = next(v for v in ATC["vectors"] if "bindkey" in v)
    payload = parse_advertisement(bytes.fromhex(vector["ad_structure_hex"])).service_data[0x181A]
    decoder = DeviceAdvertDecoder(Device(mac=vector["advertiser_address"], format="pvvx", bindkey=vector["bindkey"]))
    assert decoder.decode(payload, T0) is not None
    assert decoder.decode(payload, T0 + 1) is None  # repeated as advertised: not stored twice
    replayed_older = bytes((payload[0] - 1,)) + payload[1:]
    with pytest.raises(PayloadError, match="replayed or decreasing"):
        decoder.decode(replayed_older, T0 + 2)
    forged = bytes((payload[0] + 1,)) + payload[1:]
    with pytest.raises(PayloadError, match="decryption failed"):
        decoder.decode(forged, T0 + 3)
    plain = bytes.fromhex(ATC["vectors"][2]["service_data_0x181a_hex"])
    with pytest.raises(PayloadError, match="downgrade refused"):
        decoder.decode(plain, T0 + 4)


def test_atc_wrong_length_is_refused() -> None:
    with pytest.raises(PayloadError, match="12 bytes"):
        atc.decode_plain(bytes(12))
