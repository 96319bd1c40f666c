"""The ingest benchmark as a test, so it cannot rot: a smoke run by default, the full run with -m bench."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.bench.common import bench_modes, run_bench_module

SMOKE_TIMEOUT_S = 180


@pytest.mark.slow
@pytest.mark.parametrize("mode", bench_modes(SMOKE_TIMEOUT_S))
def test_ingest_benchmark_prints_every_figure(tmp_path: Path, mode: str) -> None:
    stdout, figures = run_bench_module("bench_ingest", mode, tmp_path, smoke_timeout=SMOKE_TIMEOUT_S)
    assert "flat out QoS 1: gateway" in stdout and "bare amqtt" in stdout
    for key in ("gateway_qos1_rate", "bare_qos1_rate", "gateway_qos0_rate", "bare_qos0_rate", "ratio_qos1",
                "gateway_100_per_s_p50_ms", "gateway_100_per_s_p99_ms", "gateway_rss_mb_connected",
                "gateway_idle_cpu_pct", "gateway_idle_cpu_pct_linger_1s"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    # every reading published in the latency phase was committed and measured
    assert figures["gateway_qos1_rate"] > 0 and figures["bare_qos1_rate"] > 0
