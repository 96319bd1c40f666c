"""The Modbus register codec (every type, swap, scale) and RTU frames of the shared vectors."""

from __future__ import annotations

import math
import struct

import pytest
from firmware_sim.modbus_server import crc16
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU

from drivers.modbus.codec import FormatCodec, ValueFormat, register_count, registers_to_value, value_to_registers
from tests.fixtures.modbus import vectors

INT_TYPES = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-(2**31), 2**31 - 1),
             "uint32": (0, 2**32 - 1), "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}
SWAPS_16 = ("none", "byte")
SWAPS_WIDE = ("none", "byte", "word", "word_byte")


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_integer_types_round_trip_every_swap(data: st.DataObject) -> None:
    data_type = data.draw(st.sampled_from(sorted(INT_TYPES)))
    swap = data.draw(st.sampled_from(SWAPS_16 if register_count(data_type) == 1 else SWAPS_WIDE))  # type: ignore[arg-type]
    low, high = INT_TYPES[data_type]
    value = data.draw(st.integers(low, high))
    fmt = ValueFormat(data_type, swap)  # type: ignore[arg-type]
    registers = value_to_registers(value, fmt)
    assert len(registers) == register_count(data_type)  # type: ignore[arg-type]
    assert all(0 <= r <= 0xFFFF for r in registers)
    assert registers_to_value(registers, fmt) == value
    # and every register pattern decodes to a value that encodes back to the same registers
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=len(registers), max_size=len(registers)))
    assert value_to_registers(registers_to_value(words, fmt), fmt) == words


@settings(max_examples=200, deadline=None)
@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False),
       swap=st.sampled_from(SWAPS_WIDE))
def test_float32_round_trip_to_its_seven_digits(value: float, swap: str) -> None:
    fmt = ValueFormat("float32", swap)  # type: ignore[arg-type]
    assert registers_to_value(value_to_registers(value, fmt), fmt) == float(f"{value:.7g}")


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False), swap=st.sampled_from(SWAPS_WIDE))
def test_float64_round_trip_exact(value: float, swap: str) -> None:
    fmt = ValueFormat("float64", swap)  # type: ignore[arg-type]
    assert registers_to_value(value_to_registers(value, fmt), fmt) == value


@settings(max_examples=200, deadline=None)
@given(raw=st.integers(-(2**15), 2**15 - 1), offset=st.sampled_from([0.0, -40.0, 273.1]))
def test_scale_offset_precision_round_trip(raw: int, offset: float) -> None:
    fmt = ValueFormat("int16", "none", 0.1, offset, 1)
    value = registers_to_value(value_to_registers(raw, ValueFormat("int16")), fmt)
    assert value == round(raw * 0.1 + offset, 1)
    assert value_to_registers(value, fmt) == value_to_registers(raw, ValueFormat("int16"))


def test_swaps_reorder_bytes_and_words() -> None:
    # 230.2 as float32 is 0x4366 0x3334 (ABCD); the same value as each swap sends it:
    abcd = [0x4366, 0x3334]
    assert registers_to_value(abcd, ValueFormat("float32", "none")) == 230.2
    assert registers_to_value([0x3334, 0x4366], ValueFormat("float32", "word")) == 230.2  # CDAB
    assert registers_to_value([0x6643, 0x3433], ValueFormat("float32", "byte")) == 230.2  # BADC
    assert registers_to_value([0x3433, 0x6643], ValueFormat("float32", "word_byte")) == 230.2  # DCBA
    assert registers_to_value([0x0190], ValueFormat("uint16", "byte")) == 0x9001


def test_integer_results_stay_ints_and_precision_zero_rounds() -> None:
    assert registers_to_value([400], ValueFormat("uint16")) == 400
    assert isinstance(registers_to_value([400], ValueFormat("uint16", scale=2)), int)
    assert registers_to_value([0xFFFF], ValueFormat("int16")) == -1
    assert registers_to_value([1234], ValueFormat("uint16", scale=0.1, precision=1)) == 123.4
    assert registers_to_value([1234], ValueFormat("uint16", scale=0.1)) == pytest.approx(123.4)
    assert registers_to_value([1234], ValueFormat("uint16", scale=0.01, precision=0)) == 12
    assert registers_to_value([1], ValueFormat("bool")) is True


def test_values_a_type_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit a uint16"):
        value_to_registers(70000, ValueFormat("uint16"))
    with pytest.raises(ValueError, match="does not fit a int16"):
        value_to_registers(-40000, ValueFormat("int16"))
    with pytest.raises(ValueError, match="multiple of the scale"):
        value_to_registers(1.23, ValueFormat("uint16", scale=0.1))


def test_not_a_number_decodes_as_nan() -> None:
    nan = struct.unpack(">2H", struct.pack(">f", math.nan))
    assert math.isnan(FormatCodec(ValueFormat("float32")).decode(list(nan)))  # type: ignore[arg-type]


def test_eastron_example_values_decode() -> None:
    for example in vectors("eastron_sdm_register_map.json")["example_values"]:
        registers = [int(h, 16) for h in example["registers_hex"]]
        assert registers_to_value(registers, ValueFormat("float32")) == example["float32"], example["source"]
        # (the vendor rounds 230.2 up to ...34; the nearest float32 ends in ...33, which decodes the same)
        assert registers_to_value(value_to_registers(example["float32"], ValueFormat("float32")),
                                  ValueFormat("float32")) == example["float32"]


def _rtu(frame_hex: str, *, server: bool = False) -> tuple[int, object]:
    framer = FramerRTU(DecodePDU(server))
    return framer.handleFrame(bytes.fromhex(frame_hex), 0, 0)  # type: ignore[no-any-return]


def test_vendor_response_frames_decode_to_their_values() -> None:
    frames = {f["name"]: f for f in vectors("modbus_rtu_frames.json")["frames"]}
    _, pdu = _rtu(frames["sdm630 response Volts 1 = 230.2"]["frame_hex"])
    assert registers_to_value(pdu.registers, ValueFormat("float32")) == 230.2  # type: ignore[attr-defined]
    _, pdu = _rtu(frames["sdm630 response Demand Time = 1.0"]["frame_hex"])
    assert registers_to_value(pdu.registers, ValueFormat("float32")) == 1.0  # type: ignore[attr-defined]
    _, pdu = _rtu(frames["sdm630 exception response (FC16|0x80, code 01 Illegal Function)"]["frame_hex"])
    assert pdu.isError() and pdu.exception_code == 1  # type: ignore[attr-defined]
    s8 = {f["name"]: f for f in vectors("air_quality_register_maps.json")["senseair_s8"]["frames"]}
    _, pdu = _rtu(s8["read CO2 reply = 400 ppm"]["frame_hex"])
    assert registers_to_value(pdu.registers, ValueFormat("uint16")) == 400  # type: ignore[attr-defined]
    _, pdu = _rtu(s8["read IR1..IR4 reply: status 0, alarm 0, output 0, CO2 400"]["frame_hex"])
    assert pdu.registers == [0, 0, 0, 400]  # type: ignore[attr-defined]
    _, pdu = _rtu(s8["read ABC period reply = 180 h"]["frame_hex"])
    assert pdu.registers == [180]  # type: ignore[attr-defined]


def test_every_vector_frame_has_a_good_crc_and_bad_ones_are_rejected() -> None:
    rtu = vectors("modbus_rtu_frames.json")
    assert crc16(b"123456789") == int(rtu["crc16_modbus_check"]["crc"], 16)
    air = vectors("air_quality_register_maps.json")["senseair_s8"]["frames"]
    for f in [*rtu["frames"], *air]:
        data = bytes.fromhex(f["frame_hex"])
        assert crc16(data[:-2]) == int.from_bytes(data[-2:], "little"), f["name"]
    for bad in rtu["must_reject"]:
        for server in (False, True):  # neither a client nor a server framer takes a PDU from it
            _, pdu = _rtu(bad["stream_hex"], server=server)
            assert pdu is None, bad["name"]
