"""The control benchmark as a test, so it cannot rot: a smoke run by default, the full run with -m bench."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.bench.common import bench_modes, run_bench_module

SMOKE_TIMEOUT_S = 180


@pytest.mark.slow
@pytest.mark.parametrize("mode", bench_modes(SMOKE_TIMEOUT_S))
def test_control_benchmark_prints_every_figure(tmp_path: Path, mode: str) -> None:
    stdout, figures = run_bench_module("bench_control", mode, tmp_path, smoke_timeout=SMOKE_TIMEOUT_S)
    assert "API command -> ack -> API response" in stdout
    for key in ("sequential_p50_ms", "sequential_p99_ms", "concurrent_wall_ms", "concurrent_p99_ms", "rss_mb"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    # every concurrent command acked, logged once, executed once
    assert figures["audit_ok_all_rounds"] is True
    assert figures["concurrent_acked"] == figures["devices"]
