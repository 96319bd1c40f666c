"""A tiny run of the control benchmark, so it cannot rot. It checks the figures exist, not their size."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_control_benchmark_smoke_run_prints_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_control", "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=170, cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "API command -> ack -> API response" in proc.stdout
    figures = json.loads(out.read_text())
    for key in ("sequential_p50_ms", "sequential_p99_ms", "concurrent_wall_ms", "concurrent_p99_ms", "rss_mb"):
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    # every concurrent command acked, logged once, executed once
    assert figures["audit_ok_all_rounds"] is True
    assert figures["concurrent_acked"] == figures["devices"]
