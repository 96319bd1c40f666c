"""Pure codecs: timestamps, the purifier flat form, the generic form, the ACL, metrics rendering."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from drivers.mqtt_json import decode_generic_reading, parse_object
from drivers.purifier import decode_purifier_reading
from gateway.broker.acl import Access, device_may
from gateway.core.errors import PayloadError
from gateway.core.metrics import Metrics
from gateway.core.timestamps import normalise_ts
from gateway.web.metrics_route import MetricsExposition


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1763800000, 1763800000.0),
        (1763800000.5, 1763800000.5),
        (1763800000123, 1763800000.123),
        ("2025-11-22T08:26:40Z", 1763800000.0),
        ("2025-11-22T09:26:40+01:00", 1763800000.0),
        ("2025-11-22T08:26:40", 1763800000.0),  # no zone: UTC
    ],
)
def test_timestamps_normalise_to_epoch_seconds(value: object, expected: float) -> None:
    assert normalise_ts(value, "ts") == pytest.approx(expected)


@pytest.mark.parametrize("value", [True, None, -5, 0, float("inf"), "soon", [1]])
def test_bad_timestamps_are_refused(value: object) -> None:
    with pytest.raises(PayloadError, match=r"^ts: "):
        normalise_ts(value, "ts")


def test_purifier_flat_form_from_the_contract() -> None:
    obj = parse_object(
        b'{"timestamp": 1763800000000, "temperature": 22.4, "humidity": 41.0, "pm1": 3.1, "pm25": 7.9,'
        b' "pm10": 11.2, "sound": 38.5, "voc": 112, "fanSpeed": 2, "powerOn": true, "networkStrength": 71}'
    )
    r = decode_purifier_reading("AP-01", obj, 1763800001.0)
    assert r.ts == 1763800000.0
    assert r.received_at == 1763800001.0
    assert r.metrics == {
        "temperature": 22.4, "humidity": 41.0, "pm1": 3.1, "pm25": 7.9, "pm10": 11.2, "sound": 38.5,
        "voc": 112, "fanSpeed": 2, "powerOn": True, "networkStrength": 71,
    }
    assert r.extra == {}


def test_purifier_without_timestamp_uses_arrival_time_and_keeps_unknown_fields() -> None:
    r = decode_purifier_reading("AP-01", {"pm25": 1, "fw": "1.2", "fanSpeed": 3.0}, 99.0)
    assert (r.ts, r.metrics, r.extra) == (99.0, {"pm25": 1, "fanSpeed": 3}, {"fw": "1.2"})
    assert isinstance(r.metrics["fanSpeed"], int)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"fanSpeed": True}, "fanSpeed: expected a number, got bool"),
        ({"fanSpeed": -1}, "fanSpeed: -1 out of range 0..5"),
        ({"networkStrength": 101}, "networkStrength: 101 out of range 0..100"),
        ({"humidity": None}, "humidity: expected a number, got null"),
        ({"pm1": -0.1}, "pm1: -0.1 out of range >= 0"),
        ({}, "no known purifier metric"),
    ],
)
def test_purifier_range_and_type_errors(obj: dict[str, object], reason: str) -> None:
    with pytest.raises(PayloadError, match="^" + reason.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        decode_purifier_reading("AP-01", obj, 1.0)


def test_generic_sensor_form() -> None:
    r = decode_generic_reading("S-1", {"ts": 1763800000.5, "metrics": {"co2": 612, "door": False}, "v": 2}, 5.0)
    assert (r.ts, r.metrics, r.extra) == (1763800000.5, {"co2": 612, "door": False}, {"v": 2})
    with pytest.raises(PayloadError, match="metrics: empty"):
        decode_generic_reading("S-1", {"metrics": {}}, 5.0)


def test_numbers_json_cannot_store_are_refused() -> None:
    with pytest.raises(PayloadError, match="out of range"):
        parse_object(b'{"pm25": 1, "note": 1e999}')


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"ts": 1763800000, "metrics": {"t": 1}, "note": "\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"\\udfff": 1}', "lone UTF-16 surrogate"),
        (b'{"timestamp": 1' + b"0" * 300 + b"}", "out of range for a number"),
        (b'{"metrics": {"t": -9223372036854775808}}', "out of range for a number"),
    ],
)
def test_values_the_store_cannot_hold_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        parse_object(payload)


def test_surrogate_pairs_and_large_but_storable_numbers_pass() -> None:
    assert parse_object(b'{"a": "\\ud83d\\ude00", "n": 9223372036854775807}') == {"a": "\U0001f600", "n": 2**63 - 1}


def test_payload_limits() -> None:
    with pytest.raises(PayloadError, match="exceeds"):
        parse_object(b" " * (64 * 1024 + 1))


@pytest.mark.parametrize(
    ("access", "topic", "allowed"),
    [
        (Access.PUBLISH, "device/AP-01/data", True),
        (Access.PUBLISH, "device/AP-01/ack", True),
        (Access.PUBLISH, "device/AP-01/status", True),
        (Access.PUBLISH, "device/AP-01/batch", True),
        (Access.PUBLISH, "device/AP-01/command", False),
        (Access.PUBLISH, "device/AP-02/data", False),
        (Access.PUBLISH, "device/AP-01/data/extra", False),
        (Access.PUBLISH, "device/+/data", False),
        (Access.SUBSCRIBE, "device/AP-01/command", True),
        (Access.SUBSCRIBE, "device/AP-01/#", False),
        (Access.SUBSCRIBE, "device/+/command", False),
        (Access.SUBSCRIBE, "device/AP-01/data", False),
        (Access.RECEIVE, "device/AP-01/command", True),
        (Access.RECEIVE, "device/AP-02/command", False),
    ],
)
def test_device_acl(access: Access, topic: str, allowed: bool) -> None:
    assert device_may("AP-01", access, topic) is allowed


def test_metrics_render_prometheus_text() -> None:
    m = Metrics()
    m.inc("x_total", 2, "things", kind="a")
    m.inc("x_total", 1, kind='b"')
    m.set("y", 3.5)
    m.gauge_callback("z", lambda: 7.0, "callback gauge")
    text = MetricsExposition(m).render().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["x"].type == "counter" and families["x"].documentation == "things"
    assert {(s.name, s.labels["kind"], s.value) for s in families["x"].samples} == {
        ("x_total", "a", 2), ("x_total", 'b"', 1)}  # the quote escaped and read back
    assert [(s.name, s.value) for s in families["y"].samples] == [("y", 3.5)] and families["y"].type == "gauge"
    assert families["z"].documentation == "callback gauge" and families["z"].samples[0].value == 7
    assert families["process_open_fds"].samples[0].value > 0  # prometheus-client's process collector
    assert m.total("x_total") == 3 and m.value("z") == 7.0
    assert m.value("x_total", kind="a") == 2 and isinstance(m.value("x_total", kind="a"), int)  # a count


def test_purifier_unknown_numbers_are_metrics_so_the_cloud_gets_them_too() -> None:
    obj = {"timestamp": 1763800000000, "pm25": 7.9, "co2": 612, "filterLife": 81.5, "childLock": True,
           "fw": "2.1", "wifi": {"rssi": -60}}
    r = decode_purifier_reading("AP-01", obj, 1763800001.0)
    assert r.metrics == {"pm25": 7.9, "co2": 612, "filterLife": 81.5, "childLock": True}
    assert r.extra == {"fw": "2.1", "wifi": {"rssi": -60}}  # not numbers: kept locally, as before


def test_purifier_with_only_unknown_numbers_is_still_refused() -> None:
    with pytest.raises(PayloadError, match="no known purifier metric"):
        decode_purifier_reading("AP-01", {"co2": 612}, 1.0)


@pytest.mark.parametrize("payload", [
    b'{"timestamp": 1763800000123, "pm25": 7.9, "temperature": -3.25, "powerOn": true, "fw": "v2e1"}',
    b'{"a": 1E5, "b": [1e-3, {"c": 12345678901234567}], "d": null}',
    b'{"n": 9223372036854775807, "m": -9223372036854775807}',
])
def test_the_number_checks_keep_every_storable_value(payload: bytes) -> None:
    # The decoder's number hooks (drivers/mqtt_json.py) only check: the values are json's own.
    assert parse_object(payload) == json.loads(payload)


def test_a_float_of_309_digits_without_an_exponent_is_refused() -> None:
    with pytest.raises(PayloadError, match="out of range for a number"):
        parse_object(b'{"pm25": ' + b"9" * 309 + b'.5}')
