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


def _modbus(figures: dict[str, Any], mode: str) -> None:
    # every cycle delivered every point (the bench asserts it per cycle), and merging cut the requests
    assert figures["merged_9600_requests"] * 20 == figures["single_9600_requests"]
    assert figures["shipped_maps_request_ratio"] >= 3


def _hub(figures: dict[str, Any], mode: str) -> None:
    # every relayed reading of every batch (timed, and the 10 hubs x 5 open ones) stored exactly once
    assert figures["lost"] == 0 and figures["doubled"] == 0 and figures["quarantined"] == 0
    assert figures["readings_stored"] == figures["readings_expected"] > 0


def _ble(figures: dict[str, Any], mode: str) -> None:
    # every distinct advert was stored (bench_ble asserts it per format); each import cost was measured
    assert all(figures[f"import_mb[{modules}]"] > 0 for modules in ("drivers.ble.formats", "drivers.ble.link"))
    # the daemon decrypts with the libcrypto it has loaded anyway: cryptography (6-7 MB) is never imported
    assert not {"cryptography", "_openssl"} & {*figures["daemon_packages_added[radio_off]"],
                                              *figures["daemon_packages_added[radio_on]"]}


def _mosquitto(figures: dict[str, Any], mode: str) -> None:
    # every reading the devices published went through Mosquitto into SQLite
    assert figures["qos1_lost"] == 0 and figures["qos1_rate"] > 0


def _panel(figures: dict[str, Any], mode: str) -> None:
    # every stream received the readings of the window (coalescing may merge a device's two readings)
    assert figures["events_received_share"] > 0.5
    assert figures["streams"] == (3 if mode == "smoke" else 20)


def _flood(figures: dict[str, Any], mode: str) -> None:
    # every phase ran: sockets were opened and the device logged in during each
    assert figures["cycles_s"] > 0 and figures["idle_one_source_opened"] > 0


def _logins(figures: dict[str, Any], mode: str) -> None:
    # every device of the reconnect storm logged in
    assert figures["storm_accepted"] == figures["devices"]


def _cpu_stages(figures: dict[str, Any], mode: str) -> None:
    # every reading offered reached the cloud (the CPU is divided by them)
    assert figures["delivered"] > 0 and figures["cpu_ms_per_reading"] > 0


def _fuzz(figures: dict[str, Any], mode: str) -> None:
    # nothing crashed, and every acknowledged payload is a reading or a quarantine row
    assert figures["crashes"] == 0 and figures["alive"] is True
    assert figures["payloads_acked"] == figures["payloads_sent"]
    assert figures["stored_plus_quarantined_minus_sent"] == 0


def _lifecycle(figures: dict[str, Any], mode: str) -> None:
    # retention beside ingest lost no reading; the history reads answered
    assert figures["ingest_lost"] == 0 and figures["retention_deleted"] > 0


def _overload(figures: dict[str, Any], mode: str) -> None:
    # both backends ran in one run, and nothing offered during or before the overload went missing
    assert figures["backends"] == ["embedded", "mosquitto"]
    for backend in figures["backends"]:
        assert figures[f"{backend}_sustained_lost"] == 0 and figures[f"{backend}_overload_lost"] == 0


def _crash(figures: dict[str, Any], mode: str) -> None:
    # through the kill -9s, the outage and the SIGTERM: every reading acknowledged, none acknowledged and lost,
    # none at the cloud under two msgIds (copies under one msgId are at-least-once, allowed)
    assert figures["settled"] is True and figures["drained"] is True
    assert figures["readings_acked"] == figures["readings_taken"] > 0
    assert figures["lost"] == 0 and figures["two_msgids"] == 0 and figures["stored_twice"] == 0
    assert figures["gateway_starts"] == figures["kills"] + 2


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
    "drain_batched_rate", "rss_mb", "cpu_ms_per_reading"), _uplink)
CONTROL = Bench("bench_control", 180, ("API command -> ack -> API response",), (
    "sequential_p50_ms", "sequential_p99_ms", "concurrent_wall_ms", "concurrent_p99_ms", "rss_mb"), _control)
STORE = Bench("bench_store", 120, ("store writer alone", "median: flat out"), (
    "rate", "cpu_us_per_reading", "records_per_commit", "trickle_cpu_us_per_reading",
    "trickle_status_cpu_us_per_step"), _store)
MODBUS = Bench("bench_modbus", 180, ("Modbus poll cycle", "shipped maps", "RSS"), (
    "merged_9600_ratio_to_wire", "merged_115200_ratio_to_wire", "single_9600_ratio_to_wire", "cpu_us_per_point",
    "merged_9600_cycle_s", "single_9600_cycle_s", "rss_mb_added"), _modbus)

HUB = Bench("bench_hub", 120, ("last part -> committed", "memory: RSS"), (
    "last_part_to_commit_p50_ms", "last_part_to_commit_max_ms", "rss_mb_hubs_connected", "rss_mb_open_batches",
    "rss_mb_growth_open_batches", "rss_mb_after_completed", "held_mb"), _hub)

BLE = Bench("bench_ble", 120, ("BLE decoders", "import cost", "daemon memory"), (*(
    f"{name}_{key}" for name in ("bthome", "bthome_encrypted", "ruuvi_df5", "atc1441", "pvvx", "pvvx_encrypted")
    for key in ("rate", "raw_rate")), "daemon_rss_mb_growth_radio_off", "daemon_rss_mb_growth_radio_on"), _ble)
PANEL = Bench("bench_panel", 120, ("panel benchmark", "open live streams"), (
    "overview_ms_p50", "overview_ms_max", "cpu_pct_without_panels", "cpu_pct_with_panels", "cpu_pct_panels_cost",
    "events_per_s", "rss_mb_before", "rss_mb_after", "rss_mb_growth"), _panel)
FLOOD = Bench("bench_flood", 180, ("connect+close cycles", "idle sockets", "out of files"), (
    "cycles_files_peak", "cycles_login_max_ms", "idle_one_source_files_peak", "idle_one_source_login_max_ms",
    "idle_many_sources_files_peak", "idle_many_sources_login_max_ms", "connect_rss_growth_mb",
    "publish_rss_growth_mb", "log_growth_kb"), _flood)
LOGINS = Bench("bench_logins", 180, ("reconnect storm", "wrong-password storm"), (
    "storm_s", "storm_rss_peak_mb", "wrong_answered", "wrong_rss_peak_mb", "old_hashes_wrong_rss_peak_mb"), _logins)
FUZZ = Bench("bench_fuzz", 180, ("fuzz run", "quarantined"), (
    "payloads_sent", "packets_sent", "crashes", "stored", "quarantined", "rss_peak_mb", "log_kb"), _fuzz)

LIFECYCLE = Bench("bench_lifecycle", 240, ("history over", "retention beside ingest", "steady state"), (
    "week_stats_one_ms", "week_series_one_ms", "week_stats_all_ms", "week_series_all_ms", "days90_stats_one_ms",
    "catch_up_readings_per_s", "ingest_with_retention_p99_ms", "ingest_alone_p99_ms", "bytes_per_reading_commit_1",
    "bytes_per_reading_commit_10", "gb_per_day_commit_10", "steady_state_gb"), _lifecycle)

MOSQUITTO = Bench("bench_mosquitto_backend", 120, ("mosquitto backend", "device -> SQLite", "RSS with"), (
    "qos1_rate", "qos1_gateway_cpu_pct", "qos1_mosquitto_cpu_pct", "qos1_cpu_us_per_reading", "fixed_rate_p99_ms",
    "rss_mb_gateway", "rss_mb_mosquitto", "rss_mb_total"), _mosquitto)

OVERLOAD = Bench("bench_overload", 180, ("delivery during a 2x overload", "embedded:", "mosquitto:"), tuple(
    f"{backend}_{key}" for backend in ("embedded", "mosquitto") for key in (
        "sustained_rate", "sustained_cpu_ms_per_reading", "overload_offered_rate", "overload_during_rate",
        "overload_live_p99_ms", "overload_cpu_pct", "ratio", "ratio_per_cpu_s")), _overload)


def _backends(figures: dict[str, Any], mode: str) -> None:
    # nothing published went missing on its way to the cloud, on either backend; the cloud's return was seen
    for backend in ("embedded", "mosquitto"):
        assert figures[f"{backend}_cloud_lost"] == 0 and figures[f"{backend}_cloud_batched_lost"] == 0
        assert not math.isnan(figures[f"{backend}_first_reading_after_outage_s"])


BACKENDS = Bench("bench_backends", 180, ("broker backends", "device -> cloud"), tuple(
    f"{backend}_{key}" for backend in ("embedded", "mosquitto") for key in (
        "sqlite_rate", "cloud_rate", "cloud_batched_rate", "cpu_ms_per_reading", "p99_ms_at_1000",
        "first_reading_after_outage_s", "rss_mb")), _backends)

CRASH = Bench("bench_crash", 120, ("crash benchmark", "LOST", "UNDER TWO msgIds"), (
    "readings_taken", "readings_acked", "lost", "two_msgids", "same_msgid_duplicates", "stored_twice", "resends",
    "max_resends_after_one_event", "max_resends_by_one_device", "recognised_resends", "restart_s_median",
    "restart_s_max", "drain_s"), _crash)

CPU_STAGES = Bench("cpu_stages", 120, ("CPU per reading",), ("cpu_ms_per_reading",), _cpu_stages)

CASES = [
    pytest.param(bench, mode, id=f"{bench.module.removeprefix('bench_')}-{mode}",
                 marks=mode_marks(mode, bench.smoke_timeout))
    for bench in (INGEST, UPLINK, CONTROL, STORE, MODBUS, HUB, BLE, PANEL, FLOOD, LOGINS, FUZZ, LIFECYCLE, MOSQUITTO,
                  BACKENDS, CRASH, OVERLOAD, CPU_STAGES)
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
