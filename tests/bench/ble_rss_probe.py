"""The gateway as `edge-gateway run` runs it, started from a config, then its memory (bench_ble.py's daemon RSS).

    python -m tests.bench.ble_rss_probe CONFIG SETTLE_SECONDS

Runs the gateway for SETTLE_SECONDS (broker, store, hubs, the BLE link with its scanner when configured), then
prints one JSON line: VmRSS, RssAnon and RssFile from /proc/self/status (kB) and the top-level packages loaded,
and stops. Without a Bluetooth controller the scanner's start fails and is retried by the supervisor, after
bleak has imported the BlueZ backend exactly as a production start does.
"""
# ruff: noqa: E402

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

# greenlet is in the test venv only (Playwright's dependency; config/requirements.lock has none), and structlog
# imports it when it can (+1.2 MB): keep it out, so the figures are those of a production install.
# (before structlog: the imports below follow)
sys.modules.setdefault("greenlet", None)  # type: ignore[arg-type]

import gateway.__main__  # noqa: F401  first, as in `edge-gateway run`: it keeps rich out of the process
from gateway.app import Gateway
from gateway.logs import configure_logging
from gateway.malloc_tuning import limit_arenas
from gateway.settings import load_settings

FIELDS = ("VmRSS", "RssAnon", "RssFile")


def memory_kb() -> dict[str, int]:
    figures = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            figures[key] = int(value.split()[0])
    return figures


async def main(config: str, settle_seconds: float) -> None:
    configure_logging("error", "json")
    gateway = Gateway(load_settings(config))
    task = asyncio.create_task(gateway.run())
    await asyncio.sleep(settle_seconds)
    figures: dict[str, object] = dict(memory_kb())
    figures["packages"] = sorted({name.split(".")[0] for name in sys.modules})
    print(json.dumps(figures), flush=True)
    gateway.stop()
    await task


if __name__ == "__main__":
    limit_arenas(1)  # as `edge-gateway run` does
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
