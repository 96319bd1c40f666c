"""Register maps: data files (TOML or YAML) that describe a Modbus device's points, loaded and validated.

A map names the device and lists its points with Home Assistant modbus keys (`name`, `address`,
`input_type`, `data_type`, `count`, `swap`, `scale`, `offset`, `precision`, `unit_of_measurement`,
`min_value`, `max_value`, `unique_id`, `device_class`, `state_class`) plus ours: `metric` (the metric name the
gateway stores; default: `unique_id` or `name` as a slug) and `writable`. Map-level limits tell the read
planner what the device accepts: `max_registers_per_read` (Modbus allows 125), `max_coils_per_read`
(2,000) and `max_gap` (unused registers a merged read may span; 0 where the device refuses holes).

Every problem is reported as `FILE: path: message` (unknown keys included: a typo must not pass as a
default): the type against `count`, addresses beyond 65535, duplicate metric names, writes to read-only
tables. Commands map to points by metric name: `fanSpeed` and `powerOn` (see drivers/modbus/driver.py).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.modbus.codec import DataType, FormatCodec, Swap, ValueFormat, register_count
from gateway.core.errors import ConfigError

InputType = Literal["holding", "input", "coil", "discrete_input"]
BIT_TABLES = ("coil", "discrete_input")
MAX_ADDRESS = 65535
MODBUS_MAX_REGISTERS = 125  # per read request (Modbus application protocol, FC03/FC04)
MODBUS_MAX_COILS = 2000  # per read request (FC01/FC02)
METRIC_PATTERN = r"^[A-Za-z][A-Za-z0-9_.]{0,63}$"


def slug(text: str) -> str:
    """A metric name from a vendor's parameter name: "Phase 1 power factor (1)" -> "phase_1_power_factor"."""
    text = re.sub(r"\(\d+\)", " ", text)  # footnote marks
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PointSpec(_Strict):
    name: str
    metric: Annotated[str | None, Field(pattern=METRIC_PATTERN)] = None
    unique_id: str | None = None
    address: Annotated[int, Field(ge=0, le=MAX_ADDRESS)]
    input_type: InputType = "holding"
    data_type: DataType | None = None  # default: bool for coils and discrete inputs, uint16 for registers
    count: Annotated[int | None, Field(ge=1, le=4)] = None
    swap: Swap = "none"
    scale: float = 1.0
    offset: float = 0.0
    precision: Annotated[int | None, Field(ge=0, le=10)] = None
    unit_of_measurement: str | None = None
    min_value: float | None = None
    max_value: float | None = None
    device_class: str | None = None
    state_class: str | None = None
    writable: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> PointSpec:
        data_type = self.resolved_type
        if self.input_type in BIT_TABLES and data_type != "bool":
            raise ValueError(f"a {self.input_type} holds one bit: data_type must be bool, not {data_type}")
        if self.count is not None and self.count != register_count(data_type):
            raise ValueError(f"data_type {data_type} spans {register_count(data_type)} register(s), "
                             f"count says {self.count}")
        if self.address + self.span - 1 > MAX_ADDRESS:
            raise ValueError(f"address {self.address} + {self.span} register(s) runs past {MAX_ADDRESS}")
        if self.swap in ("word", "word_byte") and register_count(data_type) < 2:
            raise ValueError(f"swap {self.swap} needs a 32 or 64-bit data_type, not {data_type}")
        if self.swap != "none" and data_type == "bool":
            raise ValueError("a bool has no bytes to swap")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.writable and self.input_type in ("input", "discrete_input"):
            raise ValueError(f"a {self.input_type} is read-only: it cannot be writable")
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise ValueError(f"min_value {self.min_value:g} is above max_value {self.max_value:g}")
        return self

    @property
    def resolved_type(self) -> DataType:
        if self.data_type is not None:
            return self.data_type
        return "bool" if self.input_type in BIT_TABLES else "uint16"

    @property
    def span(self) -> int:
        """Registers (or bits, in a bit table) the point occupies."""
        return 1 if self.input_type in BIT_TABLES else register_count(self.resolved_type)

    @property
    def metric_name(self) -> str:
        return self.metric or slug(self.unique_id or self.name)

    def value_format(self) -> ValueFormat:
        return ValueFormat(self.resolved_type, self.swap, self.scale, self.offset, self.precision)


class RegisterMapSpec(_Strict):
    name: str
    manufacturer: str = ""
    model: str = ""
    source: str = ""  # the vendor document the map follows
    notes: list[str] = Field(default_factory=list)
    max_registers_per_read: Annotated[int, Field(ge=1, le=MODBUS_MAX_REGISTERS)] = MODBUS_MAX_REGISTERS
    max_coils_per_read: Annotated[int, Field(ge=1, le=MODBUS_MAX_COILS)] = MODBUS_MAX_COILS
    max_gap: Annotated[int, Field(ge=0, le=MODBUS_MAX_REGISTERS)] = 0
    points: Annotated[list[PointSpec], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_metrics(self) -> RegisterMapSpec:
        seen: dict[str, int] = {}
        for index, point in enumerate(self.points):
            name = point.metric_name
            if not re.match(METRIC_PATTERN, name):
                raise ValueError(f"points.{index}: metric name {name!r} from the point's name is not usable: "
                                 f"give `metric`")
            if name in seen:
                raise ValueError(f"points.{index}: metric {name!r} already used by points.{seen[name]}")
            seen[name] = index
        return self


class Point:
    """A point of a loaded map, with its codec compiled (what the poller and the link use)."""

    __slots__ = ("address", "codec", "input_type", "max_value", "metric", "min_value", "span", "spec", "writable")

    def __init__(self, spec: PointSpec, address_offset: int = 0) -> None:
        self.spec = spec
        self.metric = spec.metric_name
        self.address = spec.address + address_offset
        self.input_type: InputType = spec.input_type
        self.span = spec.span
        self.writable = spec.writable
        self.min_value = spec.min_value
        self.max_value = spec.max_value
        self.codec = FormatCodec(spec.value_format())

    def __repr__(self) -> str:
        return f"Point({self.metric!r}, {self.input_type}@{self.address})"


class RegisterMap:
    def __init__(self, spec: RegisterMapSpec, path: Path | None = None) -> None:
        self.spec = spec
        self.path = path

    @property
    def name(self) -> str:
        return self.spec.name

    def points(self, address_offset: int = 0) -> list[Point]:
        """The map's points, shifted by `address_offset` (a channel of a multi-port device)."""
        return [Point(p, address_offset) for p in self.spec.points]

    def point(self, metric: str) -> PointSpec | None:
        for p in self.spec.points:
            if p.metric_name == metric:
                return p
        return None


def parse_map(raw: Any, path: Path) -> RegisterMap:
    """A map from already-parsed data; ConfigError with `FILE: path: message` lines."""
    try:
        spec = RegisterMapSpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([f"{path}: {_where(err['loc'], raw)}: {_message(err)}" for err in exc.errors()]) from None
    return RegisterMap(spec, path)


def load_map(path: Path | str) -> RegisterMap:
    """Read a map file (.toml, or .yaml/.yml); ConfigError with `FILE: path: message` lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: register map not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml  # type: ignore[import-untyped]  # PyYAML (an amqtt dependency); only for YAML maps

            raw = yaml.safe_load(text)
        else:
            raw = tomllib.loads(text)
    except Exception as exc:  # TOML or YAML syntax: the parser's own message
        raise ConfigError([f"{path}: syntax: {exc}"]) from None
    return parse_map(raw, path)


def _where(loc: tuple[int | str, ...], raw: Any) -> str:
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(node, list) and isinstance(item, int) and item < len(node):
            node = node[item]
            label = node.get("metric") or node.get("name") if isinstance(node, dict) else None
            parts.append(f"{item}[{label}]" if label else str(item))
        else:
            node = node.get(item) if isinstance(node, dict) else None
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


def _message(err: Any) -> str:
    message = str(err["msg"])
    return message.removeprefix("Value error, ")
