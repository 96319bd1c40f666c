"""Running a benchmark as a test (tests/bench/test_benchmarks.py): a smoke run by default, the full run opt-in.

Kept apart from common.py, which the benchmarked gateway process imports (gateway_probe.py): pytest in
that process would add ~7 MB to the RSS the benchmarks report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.bench.common import REPO

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
