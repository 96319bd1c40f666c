"""The uplink benchmark as a test, so it cannot rot: a smoke run by default, the full run with -m bench."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.bench.common import bench_modes, run_bench_module

SMOKE_TIMEOUT_S = 240


@pytest.mark.slow
@pytest.mark.parametrize("mode", bench_modes(SMOKE_TIMEOUT_S))
def test_uplink_benchmark_prints_every_figure(tmp_path: Path, mode: str) -> None:
    stdout, figures = run_bench_module("bench_uplink", mode, tmp_path, smoke_timeout=SMOKE_TIMEOUT_S)
    assert "sustained device -> cloud" in stdout
    for key in ("sustained_rate", "bare_qos1_rate", "e2e_100_p50_ms", "e2e_100_p99_ms",
                "drain_per_reading_rate", "drain_batched_rate", "rss_mb"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    # nothing published in the run went missing on its way to the cloud
    assert figures["sustained_lost"] == 0
    assert figures["drain_per_reading_lost"] == 0 and figures["drain_batched_lost"] == 0
