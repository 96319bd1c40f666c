"""A simulated BLE scanner hub: relays the advertisements of many beacons in chunked batches (CONTRACT
section 3) on `device/{hubId}/batch`, at QoS 1, logged in with the hub's own id and password.

Each beacon is a BTHome v2 thermometer (temperature, humidity, battery; unencrypted) with a MAC made from
its number (`beacon_mac`). A batch carries one advertisement per beacon, stamped with the time the hub heard
it, split into parts of `per_part` readings (2,000 beacons in parts of 30: 67 parts). For tests of the
gateway's reassembly, parts can go out of order, some twice, and some not at all.

    edge-gateway-sim hub --hub-id HUB-1 --beacons 2000 --per-part 30 --interval 60 --out-of-order --duplicates 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiomqtt  # imported when a hub connects: the batch functions are used without MQTT too

log = logging.getLogger("firmware_sim.hub")

BTHOME_SERVICE = b"\x16\xd2\xfc"  # AD type service data (16-bit UUID), UUID 0xFCD2 little-endian
FLAGS = b"\x02\x01\x06"  # LE general discoverable, BR/EDR not supported


def beacon_mac(n: int) -> str:
    """The MAC of beacon number n (0-based): C4:7C:8D:xx:xx:xx."""
    return "C4:7C:8D:" + ":".join(f"{b:02X}" for b in n.to_bytes(3, "big"))


def bthome_advert(temperature: float, humidity: float, battery: int, packet_id: int) -> bytes:
    """A BTHome v2 advertisement (unencrypted): flags, then service data with the objects in id order."""
    # packet id (uint8), battery % (uint8), temperature 0.01 degC (sint16), humidity 0.01 % (uint16)
    objects = struct.pack("<BBBBBhBH", 0x00, packet_id & 0xFF, 0x01, battery, 0x02, round(temperature * 100),
                          0x03, round(humidity * 100))
    service = BTHOME_SERVICE + b"\x40" + objects
    return FLAGS + bytes([len(service)]) + service


def beacon_readings(count: int, heard_at: float, rng: random.Random, packet_id: int = 0) -> list[dict[str, object]]:
    """One relayed advertisement per beacon, each heard a millisecond after the one before."""
    out: list[dict[str, object]] = []
    for n in range(count):
        adv = bthome_advert(round(rng.uniform(18.0, 26.0), 2), round(rng.uniform(30.0, 60.0), 2),
                            rng.randint(40, 100), packet_id)
        out.append({"mac": beacon_mac(n), "rssi": rng.randint(-95, -40), "adv": adv.hex(),
                    "ts": round(heard_at + n / 1000.0, 3)})
    return out


def batch_parts(batch_id: str, readings: Sequence[dict[str, object]], per_part: int) -> list[bytes]:
    """The batch's parts, part 1 first: `{"batchId", "part", "parts", "readings"}`."""
    chunks = [readings[i:i + per_part] for i in range(0, len(readings), per_part)] or [[]]
    return [json.dumps({"batchId": batch_id, "part": i + 1, "parts": len(chunks), "readings": list(chunk)},
                       separators=(",", ":")).encode() for i, chunk in enumerate(chunks)]


def delivery_order(parts: int, rng: random.Random, *, out_of_order: bool = False, duplicates: int = 0,
                   missing: int = 0) -> list[int]:
    """Part indexes (0-based) as the hub sends them: `missing` left out, `duplicates` sent twice."""
    order = list(range(parts))
    if missing:
        for index in rng.sample(order, min(missing, parts)):
            order.remove(index)
    if out_of_order:
        rng.shuffle(order)
    for index in rng.sample(order, min(duplicates, len(order))):
        order.insert(rng.randint(order.index(index) + 1, len(order)), index)
    return order


@dataclass
class HubOptions:
    hub_id: str = "HUB-1"
    password: str | None = None
    host: str = "127.0.0.1"
    port: int = 1883
    beacons: int = 2000
    per_part: int = 30
    out_of_order: bool = False
    duplicates: int = 0  # parts sent twice per batch
    missing: int = 0  # parts never sent per batch
    seed: int | None = None


class SimulatedHub:
    """Sends batches over one MQTT connection; `sent_parts` and `batches` count what the broker took."""

    def __init__(self, options: HubOptions, clock: Callable[[], float] = time.time) -> None:
        self.options = options
        self._clock = clock
        self._rng = random.Random(options.seed)
        self._next_heard_at = 0.0
        self.batches = 0
        self.sent_parts = 0

    def client(self) -> aiomqtt.Client:
        import aiomqtt

        o = self.options
        # max_inflight: a real hub's window; the gateway acknowledges each part once it is stored
        return aiomqtt.Client(o.host, o.port, identifier=o.hub_id, username=o.hub_id, password=o.password,
                              max_inflight_messages=20)

    def next_batch(self) -> tuple[str, list[bytes], list[int]]:
        """The next batch's id, its parts, and the order they go out in."""
        o = self.options
        batch_id = f"{o.hub_id}-{int(self._clock())}-{self.batches}"
        # Beacons are stamped a millisecond apart; a batch sent before the last one's stamps have passed
        # (no interval) continues after them, so no two relayed readings share a beacon's time.
        heard_at = max(self._clock(), self._next_heard_at)
        self._next_heard_at = heard_at + o.beacons / 1000.0
        readings = beacon_readings(o.beacons, heard_at, self._rng, packet_id=self.batches)
        parts = batch_parts(batch_id, readings, o.per_part)
        order = delivery_order(len(parts), self._rng, out_of_order=o.out_of_order, duplicates=o.duplicates,
                               missing=o.missing)
        return batch_id, parts, order

    async def send_batch(self, client: aiomqtt.Client) -> str:
        """One batch, each part at QoS 1 (returns once the broker acknowledged every part)."""
        batch_id, parts, order = self.next_batch()
        topic = f"device/{self.options.hub_id}/batch"
        await asyncio.gather(*(client.publish(topic, parts[i], qos=1) for i in order))
        self.sent_parts += len(order)
        self.batches += 1
        return batch_id


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("hub", help="a BLE scanner hub relaying beacons in chunked batches")
    p.add_argument("--hub-id", default="HUB-1", help='the hub\'s device id (default "HUB-1")')
    p.add_argument("--password-template", default="demo-{id}", help='its password, formatted with the id')
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--beacons", type=int, default=2000, help="beacons relayed per batch (default 2000)")
    p.add_argument("--per-part", type=int, default=30, help="readings per part (default 30: 67 parts)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between batches (default 60)")
    p.add_argument("--batches", type=int, default=None, help="stop after this many batches")
    p.add_argument("--out-of-order", action="store_true", help="send each batch's parts shuffled")
    p.add_argument("--duplicates", type=int, default=0, help="parts sent twice per batch")
    p.add_argument("--missing", type=int, default=0, help="parts never sent per batch (the gateway quarantines it)")
    p.add_argument("--seed", type=int, default=None)


async def run_hub(args: argparse.Namespace) -> int:
    hub = SimulatedHub(HubOptions(
        hub_id=args.hub_id, password=args.password_template.format(id=args.hub_id), host=args.host, port=args.port,
        beacons=args.beacons, per_part=args.per_part, out_of_order=args.out_of_order, duplicates=args.duplicates,
        missing=args.missing, seed=args.seed))
    async with hub.client() as client:
        while args.batches is None or hub.batches < args.batches:
            started = time.monotonic()
            batch_id = await hub.send_batch(client)
            log.info("%s: batch %s sent (%d parts so far)", args.hub_id, batch_id, hub.sent_parts)
            if args.batches is None or hub.batches < args.batches:
                await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    return 0
