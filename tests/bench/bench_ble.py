"""BLE decoder benchmark: adverts decoded per second on one core, per format, and the import cost.

    .venv/bin/python -m tests.bench.bench_ble            # 200,000 adverts per format, 3 rounds
    .venv/bin/python -m tests.bench.bench_ble --smoke    # seconds; what the test suite runs

Per format, distinct adverts from firmware_sim's encoders (each a new packet id, counter or sequence, so
nothing is dropped as a repeat) go through the whole per-advert path of the scanner: the device's decoder
(state checks, decryption, decoding) and the Reading it makes (`rate`), and through the hub's path, the raw
advertisement parsed first (`raw_rate`). CPU time of this process only (one core). Import cost: the RSS a fresh
interpreter gains importing the decoders, and the BLE link (bleak); where installed, bthome-ble's and
ruuvitag-sensor's decoders are measured the same way, for the choice between them and ours. Prints figures,
asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_sim.ble.sensors import SimulatedBleSensor

from drivers.ble.hub_adverts import BleAdvertDecoder
from tests.bench.common import REPO, run_and_report

MAC = "A4:C1:38:8D:18:B2"
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
T0 = 1_763_800_000.0

# name -> (sensor format, encrypted)
FORMATS: dict[str, tuple[str, bool]] = {
    "bthome": ("bthome", False), "bthome_encrypted": ("bthome", True), "ruuvi_df5": ("ruuvi", False),
    "atc1441": ("atc", False), "pvvx": ("pvvx", False), "pvvx_encrypted": ("pvvx", True),
}

# module to import -> what it is (import cost, RSS of a fresh interpreter)
IMPORTS: dict[str, str] = {
    "drivers.ble.formats": "our decoders",
    "drivers.ble.formats,cryptography.hazmat.primitives.ciphers.aead": "our decoders + AES-CCM",
    "drivers.ble.link": "our BLE link (bleak)",
    "drivers.ble.link,bleak.backends.bluezdbus.scanner,bleak.backends.bluezdbus.client": "... + BlueZ backend",
    "bthome_ble": "bthome-ble",
    "ruuvitag_sensor.decoder": "ruuvitag-sensor's decoder",
}


@dataclass(frozen=True)
class Device:
    id: str
    mac: str
    format: str
    bindkey: str | None
    min_interval_seconds: float = 0.0
    unchanged_repeat_seconds: float = 600.0


def _adverts(fmt: str, encrypted: bool, n: int) -> list[tuple[bytes, bytes]]:
    """n distinct adverts of one sensor: (the format's payload, the raw advertisement)."""
    sensor = SimulatedBleSensor(MAC, fmt, bindkey=KEY if encrypted else None, seed=1)  # type: ignore[arg-type]
    out = []
    for _ in range(n):
        sensor.step(0.01)
        advert = sensor.advert()
        payload = next(iter(advert.service_data.values()), None) or next(iter(advert.manufacturer_data.values()))
        out.append((payload, advert.raw))
    return out


def _rate(run: Callable[[], object], n: int) -> float:
    start = time.process_time()
    run()
    return n / max(time.process_time() - start, 1e-9)


def decode_rates(name: str, n: int) -> dict[str, float]:
    fmt, encrypted = FORMATS[name]
    adverts = _adverts(fmt, encrypted, n)
    device = Device("D", MAC, fmt, KEY.hex() if encrypted else None)
    # packet ids roll over every 256 adverts, counters of pvvx too: time moves 5 s per advert so no id is
    # mistaken for an older one (the 4-second rule); counters and sequences keep growing
    times = [T0 + 5.0 * i for i in range(n)]

    def scanner_path() -> None:
        decoder = BleAdvertDecoder([device]).lookup(MAC)
        assert decoder is not None
        decode = decoder.decode
        stored = 0
        for (payload, _), at in zip(adverts, times, strict=True):
            if decode(payload, at) is not None:
                stored += 1
        assert stored == n, (name, stored)

    def hub_path() -> None:
        decode_raw = BleAdvertDecoder([device]).decode_raw
        for (_, raw), at in zip(adverts, times, strict=True):
            decode_raw(MAC, raw, at)

    return {"rate": _rate(scanner_path, n), "raw_rate": _rate(hub_path, n)}


def library_rates(n: int) -> dict[str, float]:
    """bthome-ble's and ruuvitag-sensor's decoders on the same adverts, where they are installed."""
    figures: dict[str, float] = {}
    try:
        from ruuvitag_sensor.decoder import get_decoder  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        adverts = _adverts("ruuvi", False, n)
        decoder = get_decoder(5)
        figures["ruuvitag_sensor_df5_rate"] = _rate(
            lambda: [decoder.decode_data(payload.hex()) for payload, _ in adverts], n)  # it takes hex text
    try:
        from bthome_ble import BTHomeBluetoothDeviceData  # type: ignore[import-not-found]
        from habluetooth import BluetoothServiceInfoBleak  # type: ignore[import-not-found]
    except ImportError:
        return figures
    for name, encrypted in (("bthome_ble_rate", False), ("bthome_ble_encrypted_rate", True)):
        adverts = _adverts("bthome", encrypted, n)
        parser = BTHomeBluetoothDeviceData(bindkey=KEY if encrypted else None)
        infos = [BluetoothServiceInfoBleak(
            name="bench", address=MAC, rssi=-60, manufacturer_data={},
            service_data={"0000fcd2-0000-1000-8000-00805f9b34fb": payload},
            service_uuids=["0000fcd2-0000-1000-8000-00805f9b34fb"], source="local", device=None,
            advertisement=None, connectable=False, time=T0 + 5.0 * i, tx_power=None)
            for i, (payload, _) in enumerate(adverts)]

        def parse_all(parser: Any = parser, infos: list[Any] = infos) -> None:
            for info in infos:
                parser.update(info)

        figures[name] = _rate(parse_all, n)
    return figures


_RSS_PROBE = """
import sys
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6
# what every gateway process has loaded already
import asyncio, structlog, gateway.core.supervisor, gateway.core.links, gateway.core.models
before = rss()
try:
    for name in sys.argv[1].split(","):
        __import__(name)
except ImportError:
    print("nan")
else:
    print(rss() - before)
"""


def import_costs() -> dict[str, float]:
    figures = {}
    for modules in IMPORTS:
        out = subprocess.run([sys.executable, "-c", _RSS_PROBE, modules], capture_output=True, text=True, cwd=REPO,
                             check=True).stdout.strip()
        figures[f"import_mb[{modules}]"] = float(out)
    return figures


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    n = 2_000 if args.smoke else args.adverts
    rounds = 1 if args.smoke else args.rounds
    per_round = []
    for _ in range(rounds):
        figures: dict[str, float] = {}
        for name in FORMATS:
            for key, value in decode_rates(name, n).items():
                figures[f"{name}_{key}"] = value
        figures.update(library_rates(n))
        per_round.append(figures)
    results: dict[str, Any] = {"adverts": n, "rounds": per_round}
    for key in per_round[0]:
        results[key] = float(statistics.median(r[key] for r in per_round))
    results.update(import_costs())
    return results


def report(r: dict[str, Any]) -> str:
    lines = [f"BLE decoders, {r['adverts']:,} distinct adverts per format, {len(r['rounds'])} round(s), one core:"]
    for name in FORMATS:
        lines.append(f"  {name:18} {r[f'{name}_rate']:>10,.0f} adverts/s (scanner path), "
                     f"{r[f'{name}_raw_rate']:>10,.0f} adverts/s (raw advertisement, hub path)")
    for key in ("ruuvitag_sensor_df5_rate", "bthome_ble_rate", "bthome_ble_encrypted_rate"):
        if key in r:
            lines.append(f"  library {key.removesuffix('_rate'):26} {r[key]:>10,.0f} adverts/s")
    lines.append("import cost (RSS growth of a fresh interpreter):")
    for modules, what in IMPORTS.items():
        mb = r[f"import_mb[{modules}]"]
        lines.append(f"  {what:28} " + ("not installed" if mb != mb else f"{mb:5.1f} MB"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny run (the test suite's)")
    parser.add_argument("--adverts", type=int, default=200_000, help="distinct adverts per format and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    run_and_report(parser.parse_args(), bench, report)


if __name__ == "__main__":
    main()
