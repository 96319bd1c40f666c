"""The gateway as `edge-gateway run` runs it, plus a commit probe for benchmarks.

The probe measures publish -> committed latency from the `sent` field the load client puts in each
reading. SIGUSR1 writes the figures since the last SIGUSR1 to the stats file (one JSON line each).
"""
# ruff: noqa: E402

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

# greenlet is in the test venv only (Playwright's dependency; config/requirements.lock has none), and structlog
# imports it when it can (+1.2 MB): keep it out, so the figures are those of a production install.
# (before structlog: the imports below follow)
sys.modules.setdefault("greenlet", None)  # type: ignore[arg-type]

import gateway.__main__  # noqa: F401  first, as in `edge-gateway run`: it keeps rich out of the process
from gateway.app import Gateway
from gateway.core.models import Reading, StoreRecord
from gateway.logs import configure_logging
from gateway.malloc_tuning import limit_arenas
from gateway.settings import load_settings
from tests.bench.common import percentile


async def main(config: str, stats_path: str) -> None:
    loaded = load_settings(config)
    configure_logging("warning", "json")
    gateway = Gateway(loaded)
    latencies = array("d")
    committed = [0]
    last_commit = [0.0]

    def on_commit(batch: Sequence[StoreRecord]) -> None:
        now = time.time()
        last_commit[0] = now
        for rec in batch:
            if isinstance(rec, Reading):
                committed[0] += 1
                sent = rec.metrics.get("sent")  # (a number: a metric of the flat form)
                if sent is not None:
                    latencies.append(now - sent)

    def dump() -> None:
        values = list(latencies)  # percentile() sorts
        line = {
            "committed": committed[0],
            "last_commit": last_commit[0],
            "samples": len(values),
            "p50_ms": percentile(values, 50) * 1000,
            "p99_ms": percentile(values, 99) * 1000,
            "max_ms": (max(values) * 1000) if values else float("nan"),
        }
        with Path(stats_path).open("a") as fh:
            fh.write(json.dumps(line) + "\n")
        del latencies[:]
        committed[0] = 0

    gateway.writer.on_commit.append(on_commit)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    await gateway.run()


if __name__ == "__main__":
    limit_arenas(1)  # as `edge-gateway run` does
    asyncio.run(main(sys.argv[1], sys.argv[2]))
