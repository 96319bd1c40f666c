"""One Modbus slave on a bus as the poller sees it: its points, read plan, schedule and back-off. No I/O.

A slave is one unit id with one register map. It stands for one logical device, or for several when it
is a multi-port RTU (each channel a logical device whose points sit `address_offset` registers further
on). All channels' points are planned together, so one read can serve several rooms.

Time decisions take the monotonic seconds the bus reads from the injected clock: a slave is due at
`due`; after an answer the next poll is one interval later (never in a burst to catch up); after a
failure the wait doubles per failure in a row, from the interval up to `backoff_max`, so a dead slave
costs its bus one timeout per back-off period and never stalls the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from drivers.modbus.planner import ReadLimits, ReadRequest, plan_reads
from drivers.modbus.register_maps import Point, RegisterMap
from gateway.core.models import MetricValue


@dataclass(frozen=True, slots=True)
class LogicalDevice:
    device_id: str
    kind: str
    address_offset: int = 0  # a channel of a multi-port device: added to every address of the map


@dataclass(frozen=True, slots=True)
class SlaveConfig:
    slave: int  # the unit id
    register_map: RegisterMap
    devices: tuple[LogicalDevice, ...]
    interval: float = 10.0  # seconds between polls
    timeout: float = 0.5  # seconds to wait for each answer


@dataclass(slots=True)
class SlaveStats:
    requests: int = 0
    timeouts: int = 0
    exceptions: dict[int, int] = field(default_factory=dict)  # exception code -> count
    writes: int = 0


class PolledSlave:
    def __init__(self, config: SlaveConfig) -> None:
        self.config = config
        self.slave = config.slave
        self.timeout = config.timeout
        self.interval = config.interval
        self.devices = config.devices
        self.points: list[Point] = []
        self.owner: list[int] = []  # index into devices, per point
        # device id -> (index into devices, its points by metric name)
        self.targets: dict[str, tuple[int, dict[str, Point]]] = {}
        for index, device in enumerate(config.devices):
            mine = config.register_map.points(device.address_offset)
            self.points += mine
            self.owner += [index] * len(mine)
            self.targets[device.device_id] = (index, {p.metric: p for p in mine})
        spec = config.register_map.spec
        self.plan: list[ReadRequest] = plan_reads(
            self.points, ReadLimits(spec.max_registers_per_read, spec.max_coils_per_read, spec.max_gap)
        )
        self.due = 0.0
        self.failures = 0  # failed polls in a row
        self.online = False
        self.exception_codes: set[int] = set()  # logged since the last clean poll
        self.stats = SlaveStats()

    @property
    def name(self) -> str:
        return ",".join(d.device_id for d in self.devices)

    def empty_values(self) -> list[dict[str, MetricValue]]:
        return [{} for _ in self.devices]

    def decode(self, request: ReadRequest, data: Sequence[int] | Sequence[bool],
               values: list[dict[str, MetricValue]]) -> None:
        """The values of `request`'s points from the registers (or bits) it read, into their devices' dicts."""
        points = self.points
        owner = self.owner
        for index, offset in request.points:
            point = points[index]
            value = point.codec.decode(data, offset)  # type: ignore[arg-type]
            if type(value) is float and not math.isfinite(value):
                continue  # NaN/inf: a sensor's "no value" (not storable as JSON either)
            values[owner[index]][point.metric] = value

    def answered(self, now: float) -> bool:
        """A poll got answers. True when the slave had been failing (it recovered)."""
        recovered = self.failures > 0
        self.failures = 0
        self.due = self.due + self.interval if self.due + self.interval > now else now + self.interval
        return recovered

    def failed(self, now: float, backoff_max: float) -> float:
        """A poll got no answer: the next one waits longer (returned, in seconds)."""
        self.failures += 1
        delay = min(self.interval * 2.0 ** (self.failures - 1), max(backoff_max, self.interval))
        self.due = now + delay
        return delay
