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


def _flood(figures: dict[str, Any], mode: str) -> None:
    # every phase ran: sockets were opened and the device logged in during each
    assert figures["cycles_s"] > 0 and figures["idle_one_source_opened"] > 0


def _logins(figures: dict[str, Any], mode: str) -> None:
    # every device of the reconnect storm logged in
    assert figures["storm_accepted"] == figures["devices"]


def _fuzz(figures: dict[str, Any], mode: str) -> None:
    # nothing crashed, and every acknowledged payload is a reading or a quarantine row
    assert figures["crashes"] == 0 and figures["alive"] is True
    assert figures["payloads_acked"] == figures["payloads_sent"]
    assert figures["stored_plus_quarantined_minus_sent"] == 0


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
FLOOD = Bench("bench_flood", 180, ("connect+close cycles", "idle sockets", "out of files"), (
    "cycles_files_peak", "cycles_login_max_ms", "idle_one_source_files_peak", "idle_one_source_login_max_ms",
    "idle_many_sources_files_peak", "idle_many_sources_login_max_ms", "connect_rss_growth_mb",
    "publish_rss_growth_mb", "log_growth_kb"), _flood)
LOGINS = Bench("bench_logins", 180, ("reconnect storm", "wrong-password storm"), (
    "storm_s", "storm_rss_peak_mb", "wrong_answered", "wrong_rss_peak_mb", "old_hashes_wrong_rss_peak_mb"), _logins)
FUZZ = Bench("bench_fuzz", 180, ("fuzz run", "quarantined"), (
    "payloads_sent", "packets_sent", "crashes", "stored", "quarantined", "rss_peak_mb", "log_kb"), _fuzz)

CASES = [
    pytest.param(bench, mode, id=f"{bench.module.removeprefix('bench_')}-{mode}",
                 marks=mode_marks(mode, bench.smoke_timeout))
    for bench in (INGEST, UPLINK, CONTROL, STORE, FLOOD, LOGINS, FUZZ)
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
