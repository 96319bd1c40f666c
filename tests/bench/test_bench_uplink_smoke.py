"""A tiny run of the uplink benchmark, so it cannot rot. It checks the figures exist, not their size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_uplink_benchmark_smoke_run_prints_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_uplink", "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=230, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sustained device -> cloud" in proc.stdout
    figures = json.loads(out.read_text())
    for key in ("sustained_rate", "bare_qos1_rate", "e2e_100_p50_ms", "e2e_100_p99_ms",
                "drain_per_reading_rate", "drain_batched_rate", "rss_mb"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    # nothing published in the run went missing on its way to the cloud
    assert figures["sustained_lost"] == 0
    assert figures["drain_per_reading_lost"] == 0 and figures["drain_batched_lost"] == 0
