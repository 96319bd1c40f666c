"""A tiny run of the ingest benchmark, so it cannot rot. It checks the figures exist, not their size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ingest_benchmark_smoke_run_prints_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_ingest", "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=170, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "flat out QoS 1: gateway" in proc.stdout and "bare amqtt" in proc.stdout
    figures = json.loads(out.read_text())
    for key in ("gateway_qos1_rate", "bare_qos1_rate", "gateway_qos0_rate", "bare_qos0_rate", "ratio_qos1",
                "gateway_100_per_s_p50_ms", "gateway_100_per_s_p99_ms", "gateway_rss_mb_connected",
                "gateway_idle_cpu_pct", "gateway_idle_cpu_pct_linger_1s"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    # every reading published in the latency phase was committed and measured
    assert figures["gateway_qos1_rate"] > 0 and figures["bare_qos1_rate"] > 0
