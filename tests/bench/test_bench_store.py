"""The store writer benchmark as a test, so it cannot rot: a smoke run by default, the full run with -m bench."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.bench.common import bench_modes, run_bench_module

SMOKE_TIMEOUT_S = 120


@pytest.mark.slow
@pytest.mark.parametrize("mode", bench_modes(SMOKE_TIMEOUT_S))
def test_store_benchmark_prints_every_figure(tmp_path: Path, mode: str) -> None:
    stdout, figures = run_bench_module("bench_store", mode, tmp_path, smoke_timeout=SMOKE_TIMEOUT_S)
    assert "store writer alone" in stdout and "median: flat out" in stdout
    for key in ("rate", "cpu_us_per_reading", "records_per_commit", "trickle_cpu_us_per_reading",
                "trickle_status_cpu_us_per_step"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]) and figures[key] > 0, key
    assert len(figures["rounds"]) == (1 if mode == "smoke" else 3)
