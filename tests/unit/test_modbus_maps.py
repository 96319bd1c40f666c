"""Register maps: the shipped ones follow the vendors' documents; bad maps and bad [modbus] config are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.modbus.codec import registers_to_value
from drivers.modbus.register_maps import load_map
from gateway.__main__ import main
from gateway.core.errors import ConfigError
from gateway.settings import load_settings
from tests.fixtures.modbus import MAPS, shipped_map, vectors

UNITS_NONE = (None, "None")


def _by_address(name: str, table: str) -> dict[int, object]:
    return {p.address: p for p in shipped_map(name).spec.points if p.input_type == table}


@pytest.mark.parametrize(("map_name", "tables"), [
    ("eastron_sdm630.toml", {"SDM630_input_registers": "input", "SDM630_holding_registers": "holding"}),
    ("eastron_sdm120.toml", {"SDM120_input_registers": "input"}),
])
def test_eastron_maps_are_the_vendor_tables(map_name: str, tables: dict[str, str]) -> None:
    doc = vectors("eastron_sdm_register_map.json")
    for key, table in tables.items():
        points = _by_address(map_name, table)
        assert sorted(points) == sorted(r["address"] for r in doc[key])
        for row in doc[key]:
            point = points[row["address"]]
            assert point.data_type == "float32" and point.swap == "none" and point.scale == 1  # type: ignore[attr-defined]
            assert point.name == row["name"]  # type: ignore[attr-defined]
            unit = row.get("unit")
            assert point.unit_of_measurement == (None if unit in UNITS_NONE else unit)  # type: ignore[attr-defined]


def test_air_quality_maps_are_the_vendor_tables() -> None:
    doc = vectors("air_quality_register_maps.json")
    s8 = doc["senseair_s8"]
    assert sorted(_by_address("senseair_s8.toml", "input")) == sorted(r["address"] for r in s8["input_registers_fc04"])
    assert sorted(_by_address("senseair_s8.toml", "holding")) == sorted(
        r["address"] for r in s8["holding_registers_fc03_fc06"])
    qsa = _by_address("siemens_qsa2700.toml", "holding")
    assert sorted(qsa) == sorted(r["address"] for r in doc["siemens_qsa2700"]["holding_registers_16bit"])
    for row in doc["siemens_qsa2700"]["holding_registers_16bit"]:
        assert qsa[row["address"]].writable == (row["access"] == "R/W")  # type: ignore[attr-defined]
    pm = _by_address("delta_ohm_pmsense.toml", "input")
    instant = [row for row in doc["delta_ohm_pmsense"]["input_registers_fc04"] if isinstance(row["address"], int)]
    for row in instant:
        assert pm[row["address"]].data_type == "int16"  # type: ignore[attr-defined]
        assert pm[row["address"]].scale == row.get("scale", 1)  # type: ignore[attr-defined]
    # "6..11: same quantities averaged over 10 s": each averaged register is its instant one's twin
    (averaged,) = [row for row in doc["delta_ohm_pmsense"]["input_registers_fc04"] if row["address"] == "6..11"]
    assert "averaged over 10 s" in averaged["name"]
    for row in instant:
        twin = pm[row["address"] + 6]
        assert (twin.data_type, twin.scale) == ("int16", row.get("scale", 1))  # type: ignore[attr-defined]
        assert twin.metric == pm[row["address"]].metric + "_avg10s"  # type: ignore[attr-defined]


def test_shipped_maps_decode_the_vendors_example_values() -> None:
    sdm = shipped_map("eastron_sdm630.toml")
    volts = next(p for p in sdm.points() if p.address == 0 and p.input_type == "input")
    demand_time = next(p for p in sdm.points() if p.address == 0 and p.input_type == "holding")
    demand_period = next(p for p in sdm.points() if p.address == 2 and p.input_type == "holding")
    assert volts.codec.decode([0x4366, 0x3334]) == 230.2  # FC04 example
    assert demand_time.codec.decode([0x3F80, 0x0000]) == 1.0  # FC03 example
    assert demand_period.writable and demand_period.codec.encode(60.0) == [0x4270, 0x0000]  # FC16 example
    s8 = {p.metric: p for p in shipped_map("senseair_s8.toml").points()}
    assert s8["co2"].codec.decode([0, 0, 0, 400], 3) == 400  # IR1..IR4 reply
    assert s8["hr32_abc_period"].codec.decode([180]) == 180
    pm = {p.metric: p for p in shipped_map("delta_ohm_pmsense.toml").points()}
    assert pm["pm25"].codec.decode([123]) == 12.3  # x10 on a 16-bit register
    assert registers_to_value([0x4370, 0x8000], volts.spec.value_format()) == 240.5


def _write(tmp_path: Path, text: str, name: str = "map.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_map(path)
    return err.value.errors


POINT = '[[points]]\nname = "{name}"\naddress = {address}\n{extra}\n'


def test_bad_maps_are_refused_with_file_and_path(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name = "x"\n' + "".join([
        POINT.format(name="a", address=0, extra='data_type = "float32"\ncount = 1'),
        POINT.format(name="b", address=65535, extra='data_type = "int32"'),
        POINT.format(name="c", address=1, extra='input_type = "input"\nwritable = true'),
        POINT.format(name="d", address=2, extra='input_type = "coil"\ndata_type = "uint16"'),
        POINT.format(name="e", address=3, extra='swap = "word"'),
        POINT.format(name="f", address=4, extra='colour = "red"'),
    ]))
    errors = _errors(path)
    text = "\n".join(errors)
    assert all(line.startswith(f"{path}: points.") for line in errors), text
    assert "points.0[a]: data_type float32 spans 2 register(s), count says 1" in text
    assert "points.1[b]: address 65535 + 2 register(s) runs past 65535" in text
    assert "points.2[c]: a input is read-only" in text
    assert "points.3[d]: a coil holds one bit" in text
    assert "points.4[e]: swap word needs a 32 or 64-bit data_type" in text
    assert "points.5[f].colour: Extra inputs are not permitted" in text


def test_duplicate_metric_names_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name = "x"\n' + POINT.format(name="CO2", address=0, extra="")
                  + POINT.format(name="co2", address=1, extra=""))
    assert _errors(path) == [f"{path}: (top level): points.1: metric 'co2' already used by points.0"]


def test_yaml_maps_with_home_assistant_keys_load(tmp_path: Path) -> None:
    path = _write(tmp_path, """
name: HA sensors
points:
  - name: Room temperature
    address: 10
    input_type: input
    data_type: int16
    scale: 0.1
    precision: 1
    unit_of_measurement: "°C"
    device_class: temperature
    state_class: measurement
""", "ha.yaml")
    (point,) = load_map(path).points()
    assert point.metric == "room_temperature" and point.codec.decode([215]) == 21.5


def _config(tmp_path: Path, modbus: str, devices: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[gateway]\nid = "gw"\norg = "o"\n[broker]\nallow_anonymous = true\n{devices}\n{modbus}\n',
                    encoding="utf-8")
    return path


BUS = ('[[modbus.buses]]\nport = "/dev/ttyUSB0"\n{bus}\n'
       '[[modbus.buses.devices]]\nslave = {slave}\nmap = "{map}"\n{device}\n')


def test_check_config_validates_the_maps_a_config_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, 'name = "x"\n' + POINT.format(name="a", address=0, extra='data_type = "int64"\ncount = 2'))
    config = _config(tmp_path, BUS.format(bus="", slave=1, map=bad.name, device='id = "dev-1"'))
    assert main(["check-config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"{bad}: points.0[a]: data_type int64 spans 4 register(s), count says 2"


def test_modbus_config_mistakes_are_named(tmp_path: Path) -> None:
    config = _config(tmp_path, BUS.format(bus="baudrate = 38400\nmessage_wait_milliseconds = 1.0", slave=1,
                                          map="senseair_s8.toml", device='id = "co2-1"'))
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.errors == [f"{config}: modbus.buses.0: message_wait_milliseconds 1 is below the inter-frame "
                                f"minimum of 1.75 ms at 38400 baud"]
    config = _config(tmp_path, BUS.format(bus="", slave=1, map="senseair_s8.toml",
                                          device='id = "co2-1"\n[[modbus.buses.devices.channels]]\nid = "x"'))
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.errors == [f"{config}: modbus.buses.0.devices.0[id=co2-1]: give either `id` (one device) or "
                                f"`channels` (a multi-port device), not both"]
    config = _config(tmp_path, BUS.format(bus="", slave=5, map="senseair_s8.toml",
                                          device='id = "co2-5"\nkind = "modbus-purifier"')
                     + BUS.format(bus="", slave=6, map="senseair_s8.toml", device='id = "AP-01"'),
                     '[[devices]]\nid = "AP-01"\nkind = "modbus-sensor"')
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    text = "\n".join(err.value.errors)
    assert "port '/dev/ttyUSB0' appears on more than one bus" in text
    assert "device id 'AP-01' appears more than once" in text
    assert "devices[id=AP-01].kind: 'modbus-sensor' is a Modbus kind" in text
    config = _config(tmp_path, BUS.format(bus="", slave=5, map="senseair_s8.toml",
                                          device='id = "co2-5"\nkind = "modbus-purifier"'))
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.errors == [
        f"{config}: modbus.buses.0.devices.0[id=co2-5].map: a modbus-purifier needs a writable point 'fanSpeed' "
        f"in {MAPS / 'senseair_s8.toml'}",
        f"{config}: modbus.buses.0.devices.0[id=co2-5].map: a modbus-purifier needs a writable point 'powerOn' "
        f"in {MAPS / 'senseair_s8.toml'}"]


def test_a_good_modbus_config_loads(tmp_path: Path) -> None:
    config = _config(tmp_path, BUS.format(bus="baudrate = 19200\nparity = \"E\"", slave=4, map="rs485_purifier.toml",
                                          device='id = "pur-1"\nkind = "modbus-purifier"\nroom = "101"'))
    s = load_settings(config).settings
    assert s.modbus.device_kinds() == {"pur-1": "modbus-purifier"}
    assert s.modbus.buses[0].gap_seconds == pytest.approx(3.5 * 11 / 19200)


def test_the_readme_simulator_config_is_valid() -> None:
    s = load_settings(MAPS.parent / "modbus-sim.example.toml").settings
    assert s.modbus.device_kinds() == {"co2-101": "modbus-sensor", "pm-101": "modbus-sensor",
                                       "meter-main": "modbus-sensor", "purifier-101": "modbus-purifier"}


def test_a_purifiers_power_point_must_be_a_bool(tmp_path: Path) -> None:
    text = (MAPS / "rs485_purifier.toml").read_text(encoding="utf-8").replace(
        'address = 0\ninput_type = "coil"', 'address = 5\ninput_type = "holding"\ndata_type = "uint16"')
    pmap = _write(tmp_path, text, "purifier16.toml")
    device = 'id = "p-1"\nkind = "modbus-purifier"'
    config = _config(tmp_path, BUS.format(bus="", slave=4, map=pmap.name, device=device))
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert err.value.errors == [f"{config}: modbus.buses.0.devices.0[id=p-1].map: 'powerOn' in {pmap} must be a bool "
                                f'(a coil, or a register with data_type = "bool"), not uint16']
