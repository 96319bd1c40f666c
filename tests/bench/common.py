"""What the benchmarks share: percentiles, the daemon's command line and the run-print-save tail of their main()."""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# `edge-gateway run` as a production install runs it: the test venv also holds greenlet (Playwright's
# dependency, absent from config/requirements.lock), which structlog imports when it can (+1.2 MB of RSS).
DAEMON_ARGV = ("-c", "import sys; sys.modules['greenlet'] = None; from gateway.cli import main; sys.exit(main())",
               "run")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of unsorted values (nan for none)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_and_report(
    args: argparse.Namespace,
    bench: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    report: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    # A production install (pip, non-editable) ships compiled bytecode. A dev checkout with
    # PYTHONDONTWRITEBYTECODE set (as on our CI machines) would compile every module at each start,
    # which costs the measured daemon ~1 MB of RSS and start-up CPU that production never pays.
    for package in ("gateway", "drivers", "firmware-sim"):
        compileall.compile_dir(REPO / package, quiet=1)
    results = asyncio.run(bench(args))
    print(report(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results
