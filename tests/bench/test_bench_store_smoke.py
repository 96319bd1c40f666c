"""A tiny run of the store writer benchmark, so it cannot rot. It checks the figures exist, not their size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_store_benchmark_smoke_run_prints_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_store", "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=110, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "store writer alone" in proc.stdout and "median: flat out" in proc.stdout
    figures = json.loads(out.read_text())
    for key in ("rate", "cpu_us_per_reading", "records_per_commit", "trickle_cpu_us_per_reading",
                "trickle_status_cpu_us_per_step"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert len(figures["rounds"]) == 1
