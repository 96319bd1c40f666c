"""Simulated Modbus slaves built from register-map files, with values that move and per-slave faults.

A slave serves the points of a map (the gateway's shipped maps in config/registers/, read as data): each
point's registers hold an encoded value (uint16, int16, uint32, int32, float32, bool, with the map's
scale) that drifts around a plausible level for its unit. Writable points keep what is written. A read
that touches an unmapped address answers exception 02 where the map says the device refuses holes
(`max_gap = 0`), zeros otherwise. Nothing here imports the gateway: only the map files and the wire.

Faults, per slave: `silent` (never answers), `slow` (answers after `slow_ms`), `garbled` (answers with a
broken CRC), `exception` (answers every request with `exception_code`); with `count`, only that many answers.
"""

from __future__ import annotations

import math
import random
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3
_FORMATS = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f", "int64": ">q",
            "uint64": ">Q", "float64": ">d"}
# a plausible level and swing per unit (or metric name), for values that move
_LEVELS: dict[str, tuple[float, float]] = {
    "ppm": (650.0, 150.0), "co2": (650.0, 150.0), "µg/m³": (12.0, 6.0), "Volts": (230.0, 3.0), "V": (230.0, 3.0),
    "Amps": (4.0, 2.0), "A": (4.0, 2.0), "Watts": (900.0, 400.0), "W": (900.0, 400.0), "Hz": (50.0, 0.05),
    "°C": (21.5, 1.5), "%": (45.0, 5.0), "particles/ml": (30.0, 10.0),
}
MODELS = {"s8": "senseair_s8.toml", "qsa2700": "siemens_qsa2700.toml", "sdm630": "eastron_sdm630.toml",
          "sdm120": "eastron_sdm120.toml", "pmsense": "delta_ohm_pmsense.toml", "purifier": "rs485_purifier.toml"}


@dataclass
class Fault:
    mode: str = "none"  # none | silent | slow | garbled | exception
    slow_ms: float = 0.0
    exception_code: int = 4
    count: int = 0  # the fault hits only this many answers, then the slave behaves (0: every answer)

    def hit(self) -> str:
        """The fault mode of this answer (counting down a limited fault)."""
        mode = self.mode
        if self.count > 0:
            self.count -= 1
            if self.count == 0:
                self.mode = "none"
        return mode


@dataclass
class _SimPoint:
    table: str
    address: int
    fmt: str  # struct format, or "bool"
    scale: float
    level: float
    swing: float
    period: float
    phase: float
    writable: bool
    counter: bool  # an energy counter only grows


@dataclass
class SimSlave:
    unit: int
    model: str
    points: list[_SimPoint]
    refuse_holes: bool
    fault: Fault = field(default_factory=Fault)
    registers: dict[str, dict[int, int]] = field(default_factory=lambda: {"holding": {}, "input": {}})
    bits: dict[str, dict[int, bool]] = field(default_factory=lambda: {"coil": {}, "discrete_input": {}})
    written: set[tuple[str, int]] = field(default_factory=set)
    requests: int = 0

    def tick(self, t: float) -> None:
        """Move every value that nobody wrote to its level at time `t` (seconds)."""
        for p in self.points:
            if (p.table, p.address) in self.written:
                continue
            if p.fmt == "bool":
                self.bits[p.table][p.address] = bool(int(t / p.period) % 2) if not p.writable else \
                    self.bits[p.table].get(p.address, True)
                continue
            if p.counter:
                value = p.level + t / 3600.0 * p.swing
            else:
                value = p.level + p.swing * math.sin(2 * math.pi * t / p.period + p.phase)
            self._store(p, value)

    def _store(self, p: _SimPoint, value: float) -> None:
        raw: float | int = value / p.scale
        if p.fmt not in (">f", ">d"):
            lo, hi = _int_range(p.fmt)
            raw = min(max(round(raw), lo), hi)
        data = struct.pack(p.fmt, raw)
        words = struct.unpack(f">{len(data) // 2}H", data)
        table = self.registers[p.table]
        for i, word in enumerate(words):
            table[p.address + i] = word

    def read_registers(self, table: str, address: int, count: int) -> list[int] | int:
        """The registers, or an exception code."""
        store = self.registers[table]
        if self.refuse_holes and any(a not in store for a in range(address, address + count)):
            return ILLEGAL_ADDRESS
        if not any(a in store for a in range(address, address + count)):
            return ILLEGAL_ADDRESS
        return [store.get(a, 0) for a in range(address, address + count)]

    def read_bits(self, table: str, address: int, count: int) -> list[bool] | int:
        store = self.bits[table]
        if any(a not in store for a in range(address, address + count)):
            return ILLEGAL_ADDRESS
        return [store[a] for a in range(address, address + count)]

    def write_registers(self, address: int, values: list[int]) -> int | None:
        """Write holding registers; an exception code when any is not a writable point's."""
        writable = {(a + i) for p in self.points if p.table == "holding" and p.writable
                    for a in (p.address,) for i in range(_width(p.fmt))}
        if any(address + i not in writable for i in range(len(values))):
            return ILLEGAL_ADDRESS
        for i, value in enumerate(values):
            self.registers["holding"][address + i] = value
            self.written.add(("holding", address + i))
        return None

    def write_coil(self, address: int, value: bool) -> int | None:
        if not any(p.table == "coil" and p.address == address and p.writable for p in self.points):
            return ILLEGAL_ADDRESS
        self.bits["coil"][address] = value
        self.written.add(("coil", address))
        return None


def _width(fmt: str) -> int:
    return 1 if fmt == "bool" else struct.calcsize(fmt) // 2


def _int_range(fmt: str) -> tuple[int, int]:
    bits = struct.calcsize(fmt) * 8
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if fmt[-1].islower() else (0, (1 << bits) - 1)


def load_slave(unit: int, model_or_path: str, maps_dir: Path, *, seed: int | None = None) -> SimSlave:
    """A slave serving the points of a map file (a model name from MODELS, or a path)."""
    path = maps_dir / MODELS[model_or_path] if model_or_path in MODELS else Path(model_or_path)
    spec: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    rng = random.Random(seed if seed is not None else unit)
    points = []
    for raw in spec["points"]:
        table = raw.get("input_type", "holding")
        data_type = raw.get("data_type", "bool" if table in ("coil", "discrete_input") else "uint16")
        unit_name = raw.get("unit_of_measurement") or raw.get("metric", "")
        level, swing = _LEVELS.get(unit_name, _LEVELS.get(raw.get("metric", ""), (1.0 + rng.random() * 9, 0.5)))
        counter = unit_name in ("kWh", "kVArh", "kvarh", "kWh/MWh", "kVArh/MVArh", "kVAh/MVAh", "Ah/kAh")
        if counter:
            level, swing = 1000.0 + rng.random() * 500, 2.0
        if raw.get("metric") == "fanSpeed":
            level, swing = 2.0, 0.0
        points.append(_SimPoint(table, int(raw["address"]), "bool" if data_type == "bool" else _FORMATS[data_type],
                                float(raw.get("scale", 1.0)), level, swing, 60.0 + rng.random() * 240,
                                rng.random() * 6.28, bool(raw.get("writable", False)), counter))
    slave = SimSlave(unit, model_or_path, points, refuse_holes=int(spec.get("max_gap", 0)) == 0)
    slave.tick(0.0)
    return slave
