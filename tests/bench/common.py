"""What the benchmarks share: percentiles and the run-print-save tail of their main()."""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


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


# The benchmarks as tests: each runs as a smoke run (seconds, in the default test run) and as a full run
# (minutes, opt-in with `pytest -m bench`). The tests check that every figure exists, not its size.
FULL_RUN_TIMEOUT_S = 1800  # a full ingest run takes ~8 min on a quiet 2-core machine


MODES = ("smoke", "full")


def mode_marks(mode: str, smoke_timeout: float) -> list[pytest.MarkDecorator]:
    """A smoke run is in the default run; a full run is marked bench (opt-in). Each with its pytest timeout."""
    if mode == "smoke":
        return [pytest.mark.timeout(smoke_timeout)]
    return [pytest.mark.bench, pytest.mark.timeout(FULL_RUN_TIMEOUT_S)]


def run_bench_module(module: str, mode: str, tmp_path: Path, *, smoke_timeout: float) -> tuple[str, dict[str, Any]]:
    """`python -m tests.bench.<module>` in a child process; returns its stdout and its JSON figures."""
    out = tmp_path / "bench.json"
    args = [sys.executable, "-m", f"tests.bench.{module}", "--json", str(out)]
    if mode == "smoke":
        args.append("--smoke")
    timeout = smoke_timeout if mode == "smoke" else FULL_RUN_TIMEOUT_S
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=timeout - 10)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if mode == "full":
        print(proc.stdout)  # the figures, for `pytest -m bench -s`
    figures: dict[str, Any] = json.loads(out.read_text())
    return proc.stdout, figures
