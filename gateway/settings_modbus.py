"""The `[modbus]` section of the config: serial buses, their slaves, and the register maps they name.

    [[modbus.buses]]
    port = "/dev/ttyUSB0"          # or a pyserial URL: socket://host:port (RTU framing over TCP)
    baudrate = 9600
    [[modbus.buses.devices]]
    id = "co2-101"
    slave = 254
    map = "senseair_s8.toml"       # next to the config file, else a shipped map in config/registers/
    kind = "modbus-sensor"

A multi-port device lists `[[modbus.buses.devices.channels]]` instead of an `id`: each channel is a logical
device of its own (id, name, room, kind) whose points sit `address_offset` registers further on.
Register maps are validated when the config is (`check-config`), their errors named by the map's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.modbus.timing import inter_frame_gap
from gateway.core.errors import ConfigError

if TYPE_CHECKING:
    from drivers.modbus.register_maps import RegisterMap

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"  # as gateway.settings (ids appear in topics)
SHIPPED_MAPS = Path(__file__).resolve().parent.parent / "config" / "registers"
MODBUS_KINDS = ("modbus-sensor", "modbus-purifier", "modbus-switch")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModbusChannelSettings(_Strict):
    id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    name: str = ""
    room: str = ""
    kind: Literal["modbus-sensor", "modbus-purifier", "modbus-switch"] = "modbus-sensor"
    address_offset: Annotated[int, Field(ge=0, le=65535)] = 0


class ModbusDeviceSettings(_Strict):
    id: Annotated[str | None, Field(pattern=DEVICE_ID_PATTERN)] = None  # not with channels
    slave: Annotated[int, Field(ge=1, le=255)]  # unit id: 1-247 by the spec; some sensors answer 254 too
    map: str
    scan_interval: Annotated[float, Field(gt=0, le=86_400)] = 10.0  # seconds between polls
    timeout: Annotated[float | None, Field(gt=0, le=60)] = None  # None: the bus's
    name: str = ""
    room: str = ""
    kind: Literal["modbus-sensor", "modbus-purifier", "modbus-switch"] = "modbus-sensor"
    channels: list[ModbusChannelSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_or_channels(self) -> ModbusDeviceSettings:
        if (self.id is None) == (not self.channels):
            raise ValueError("give either `id` (one device) or `channels` (a multi-port device), not both")
        return self

    def logical(self) -> list[ModbusChannelSettings]:
        """The logical devices this slave stands for (itself, or each channel)."""
        if self.channels:
            return list(self.channels)
        assert self.id is not None
        return [ModbusChannelSettings(id=self.id, name=self.name, room=self.room, kind=self.kind)]


class ModbusBusSettings(_Strict):
    name: str | None = None  # default: the port
    port: Annotated[str, Field(min_length=1)]
    baudrate: Annotated[int, Field(ge=300, le=921_600)] = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    timeout: Annotated[float, Field(gt=0, le=60)] = 0.5  # seconds to wait for an answer
    retries: Annotated[int, Field(ge=0, le=10)] = 2  # more attempts of a command's write + read-back
    # Silence between frames; default 3.5 character times (1.75 ms above 19,200 baud), never less.
    message_wait_milliseconds: Annotated[float | None, Field(ge=0, le=1000)] = None
    offline_after: Annotated[int, Field(ge=1, le=100)] = 3  # failed polls in a row before devices go offline
    backoff_max_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    devices: Annotated[list[ModbusDeviceSettings], Field(min_length=1)]

    @model_validator(mode="after")
    def _gap_and_slaves(self) -> ModbusBusSettings:
        minimum = inter_frame_gap(self.baudrate, self.bytesize, self.parity, self.stopbits) * 1000.0
        if self.message_wait_milliseconds is not None and self.message_wait_milliseconds < minimum - 1e-9:
            raise ValueError(f"message_wait_milliseconds {self.message_wait_milliseconds:g} is below the "
                             f"inter-frame minimum of {minimum:.3g} ms at {self.baudrate} baud")
        units = [d.slave for d in self.devices]
        repeated = sorted({u for u in units if units.count(u) > 1})
        if repeated:
            raise ValueError(f"slave ids must be unique on a bus, repeated: {', '.join(map(str, repeated))}")
        return self

    @property
    def label(self) -> str:
        return self.name or self.port

    @property
    def gap_seconds(self) -> float:
        if self.message_wait_milliseconds is None:
            return inter_frame_gap(self.baudrate, self.bytesize, self.parity, self.stopbits)
        return self.message_wait_milliseconds / 1000.0


class ModbusSection(_Strict):
    buses: list[ModbusBusSettings] = Field(default_factory=list)

    def device_kinds(self) -> dict[str, str]:
        """Every logical device on every bus -> its kind."""
        return {c.id: c.kind for bus in self.buses for d in bus.devices for c in d.logical()}

    def cross_check(self, mqtt_ids: list[str], mqtt_kinds: dict[str, str]) -> list[tuple[str, str]]:
        """Ids unique across buses and the LAN broker's devices, ports unique, Modbus kinds only here."""
        problems: list[tuple[str, str]] = []
        seen = set(mqtt_ids)
        ports: set[str] = set()
        for b, bus in enumerate(self.buses):
            if bus.port in ports:
                problems.append((f"modbus.buses.{b}.port", f"port {bus.port!r} appears on more than one bus"))
            ports.add(bus.port)
            for d, device in enumerate(bus.devices):
                for logical in device.logical():
                    if logical.id in seen:
                        problems.append((f"modbus.buses.{b}.devices.{d}[id={logical.id}]",
                                         f"device id {logical.id!r} appears more than once"))
                    seen.add(logical.id)
        for device_id, kind in mqtt_kinds.items():
            if kind in MODBUS_KINDS:
                problems.append((f"devices[id={device_id}].kind",
                                 f"{kind!r} is a Modbus kind: configure the device under [[modbus.buses.devices]]"))
        return problems


def resolve_map(name: str, config_dir: Path) -> Path:
    """A map path as written in the config: absolute, next to the config file, or a shipped map."""
    path = Path(name)
    if path.is_absolute():
        return path
    local = config_dir / path
    if not local.exists() and (SHIPPED_MAPS / path).exists():
        return SHIPPED_MAPS / path
    return local


def check_maps(section: ModbusSection, config_path: Path) -> list[str]:
    """Every map the config names, loaded and validated: `FILE: path: message` lines (empty when all good)."""
    if not section.buses:
        return []  # (and no map code imported)
    from drivers import registry
    from drivers.modbus.register_maps import MAX_ADDRESS, load_map

    errors: list[str] = []
    loaded: dict[Path, RegisterMap | None] = {}
    for b, bus in enumerate(section.buses):
        for d, device in enumerate(bus.devices):
            path = resolve_map(device.map, config_path.parent)
            if path not in loaded:
                try:
                    loaded[path] = load_map(path)
                except ConfigError as exc:
                    errors += exc.errors
                    loaded[path] = None
            register_map = loaded[path]
            if register_map is None:
                continue
            top = max(p.address + p.span - 1 for p in register_map.spec.points)
            for logical in device.logical():
                where = f"{config_path}: modbus.buses.{b}.devices.{d}[id={logical.id}]"
                if top + logical.address_offset > MAX_ADDRESS:
                    errors.append(f"{where}.address_offset: {logical.address_offset} moves {path}'s last register "
                                  f"({top}) past {MAX_ADDRESS}")
                needed: tuple[str, ...] = getattr(registry.load(logical.kind), "command_points", ())
                for metric in needed:
                    point = register_map.point(metric)
                    if point is None or not point.writable:
                        errors.append(f"{where}.map: a {logical.kind} needs a writable point {metric!r} in {path}")
                    elif metric == "powerOn" and point.resolved_type != "bool":
                        errors.append(f"{where}.map: 'powerOn' in {path} must be a bool (a coil, or a register "
                                      f"with data_type = \"bool\"), not {point.resolved_type}")
    return errors
