"""The benchmarks as tests, so they cannot rot: each runs as a smoke run (seconds) in the default run and as
its full run with `pytest -m bench` (minutes; `-s` shows the figures). The tests check that every figure
exists and that nothing was lost, never how fast anything was."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.bench.runner import MODES, mode_marks, run_bench_module


def _ingest(figures: dict[str, Any], mode: str) -> None:
    # every reading published in the latency phase was committed and measured
    assert figures["gateway_qos1_rate"] > 0 and figures["bare_qos1_rate"] > 0


def _uplink(figures: dict[str, Any], mode: str) -> None:
    # nothing published in the run went missing on its way to the cloud
    assert figures["sustained_lost"] == 0
    assert figures["drain_per_reading_lost"] == 0 and figures["drain_batched_lost"] == 0


def _control(figures: dict[str, Any], mode: str) -> None:
    # every concurrent command acked, logged once, executed once
    assert figures["audit_ok_all_rounds"] is True
    assert figures["concurrent_acked"] == figures["devices"]


def _store(figures: dict[str, Any], mode: str) -> None:
    assert all(figures[key] > 0 for key in STORE.figures)
    assert len(figures["rounds"]) == (1 if mode == "smoke" else 3)


def _lifecycle(figures: dict[str, Any], mode: str) -> None:
    # retention beside ingest lost no reading; the history reads answered
    assert figures["ingest_lost"] == 0 and figures["retention_deleted"] > 0


@dataclass(frozen=True)
class Bench:
    module: str  # tests.bench.<module>
    smoke_timeout: float  # seconds, for the smoke run on a busy 2-core machine
    says: tuple[str, ...]  # in its printed report
    figures: tuple[str, ...]  # finite floats in its JSON
    check: Callable[[dict[str, Any], str], None]


INGEST = Bench("bench_ingest", 180, ("flat out QoS 1: gateway", "bare amqtt"), (
    "gateway_qos1_rate", "bare_qos1_rate", "gateway_qos0_rate", "bare_qos0_rate", "ratio_qos1",
    "gateway_100_per_s_p50_ms", "gateway_100_per_s_p99_ms", "gateway_rss_mb_connected",
    "gateway_idle_cpu_pct", "gateway_idle_cpu_pct_linger_1s"), _ingest)
UPLINK = Bench("bench_uplink", 240, ("sustained device -> cloud",), (
    "sustained_rate", "bare_qos1_rate", "e2e_100_p50_ms", "e2e_100_p99_ms", "drain_per_reading_rate",
    "drain_batched_rate", "rss_mb"), _uplink)
CONTROL = Bench("bench_control", 180, ("API command -> ack -> API response",), (
    "sequential_p50_ms", "sequential_p99_ms", "concurrent_wall_ms", "concurrent_p99_ms", "rss_mb"), _control)
STORE = Bench("bench_store", 120, ("store writer alone", "median: flat out"), (
    "rate", "cpu_us_per_reading", "records_per_commit", "trickle_cpu_us_per_reading",
    "trickle_status_cpu_us_per_step"), _store)

LIFECYCLE = Bench("bench_lifecycle", 240, ("history over", "retention beside ingest", "steady state"), (
    "week_stats_one_ms", "week_series_one_ms", "week_stats_all_ms", "week_series_all_ms", "days90_stats_one_ms",
    "catch_up_readings_per_s", "ingest_with_retention_p99_ms", "ingest_alone_p99_ms", "bytes_per_reading_commit_1",
    "bytes_per_reading_commit_10", "gb_per_day_commit_10", "steady_state_gb"), _lifecycle)

CASES = [
    pytest.param(bench, mode, id=f"{bench.module.removeprefix('bench_')}-{mode}",
                 marks=mode_marks(mode, bench.smoke_timeout))
    for bench in (INGEST, UPLINK, CONTROL, STORE, LIFECYCLE)
    for mode in MODES
]


@pytest.mark.slow
@pytest.mark.parametrize(("bench", "mode"), CASES)
def test_benchmark_prints_every_figure(tmp_path: Path, bench: Bench, mode: str) -> None:
    stdout, figures = run_bench_module(bench.module, mode, tmp_path, smoke_timeout=bench.smoke_timeout)
    for words in bench.says:
        assert words in stdout, words
    for key in bench.figures:
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    bench.check(figures, mode)
