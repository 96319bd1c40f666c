"""The gateway as `edge-gateway run` runs it, with BLE decoders for the hub benchmark (bench_hub.py).

The gateway's own BLE decoders are not wired into the demultiplexer yet; relayed adverts are decoded by the
tests' small BTHome decoder, which knows the simulator's beacons (MACs 0..beacons-1 -> T-1..T-20).
"""
# ruff: noqa: E402

from __future__ import annotations

import asyncio
import sys

from firmware_sim.hub import beacon_mac

# greenlet is in the test venv only (Playwright's dependency; config/requirements.lock has none), and structlog
# imports it when it can (+1.2 MB): keep it out, so the figures are those of a production install.
# (before structlog: the imports below follow)
sys.modules.setdefault("greenlet", None)  # type: ignore[arg-type]

import gateway.__main__  # noqa: F401  first, as in `edge-gateway run`: it keeps rich out of the process
from gateway.app import Gateway
from gateway.logs import configure_logging
from gateway.malloc_tuning import limit_arenas
from gateway.settings import load_settings
from tests.fixtures.bthome_min import MiniBthomeDecoder

LOGICAL = [f"T-{n}" for n in range(1, 21)]


async def main(config: str, beacons: int) -> None:
    configure_logging("warning", "json")
    gateway = Gateway(load_settings(config))
    gateway.hubs.set_decoder(MiniBthomeDecoder({beacon_mac(n): LOGICAL[n % 20] for n in range(beacons)}))
    await gateway.run()


if __name__ == "__main__":
    limit_arenas(1)  # as `edge-gateway run` does
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
