"""A device-hour of readings encoded as one compact value decodes to exactly the readings given."""

from __future__ import annotations

import json
import math
import random

import pytest

from gateway.store.reading_blocks import Entry, decode, encode
from tests.fixtures.lifecycle import T0, metrics_of


def hour_of_readings(device: int = 3, interval: float = 10.0) -> list[Entry]:
    """An hour of a purifier as the store holds it (metrics through JSON, as a row gives them back)."""
    out: list[Entry] = []
    for k in range(int(3600 / interval)):
        ts = T0 + k * interval + 0.25
        out.append((ts, ts + 0.05, json.loads(json.dumps(metrics_of(device, ts))), None))
    return out


def test_an_hour_of_a_purifier_decodes_exactly_in_a_few_bytes_a_reading() -> None:
    entries = hour_of_readings()
    blob = encode(entries)
    assert decode(blob) == entries
    assert len(blob) / len(entries) < 4  # a row with its index takes ~160 B


def test_every_kind_of_value_comes_back_as_it_was_type_and_order_of_keys_included() -> None:
    rng = random.Random(7)
    entries: list[Entry] = []
    for i in range(200):
        ts = T0 + i * 9.731 + rng.random()  # no decimal form: the doubles are kept
        metrics = {
            "pm25": round(rng.uniform(0, 500), 1),
            "count": rng.randrange(-(2**40), 2**40),
            "on": rng.random() < 0.5,
            "zero": -0.0 if i == 5 else 0.0,
            "big": 10**30 if i == 7 else i,  # beyond 64 bits: kept as JSON
            "tiny": 1e-300 * i,
            "label": "a" if i % 2 else 1,  # mixed types
        }
        if i % 3 == 0:  # another shape: keys missing, another order
            metrics = {"on": metrics["on"], "pm25": metrics["pm25"]}
        entries.append((ts, ts + rng.random(), metrics, {"fw": "1.2", "n": i} if i % 50 == 0 else None))
    got = decode(encode(entries))
    assert got == entries
    assert [list(m) for _, _, m, _ in got] == [list(m) for _, _, m, _ in entries]
    assert [type(v) for _, _, m, _ in got for v in m.values()] == [type(v) for _, _, m, _ in entries
                                                                  for v in m.values()]
    assert math.copysign(1.0, got[5][2]["zero"]) == -1.0


@pytest.mark.parametrize("values", [[1.5], [2**62, -(2**62)], [True], ["x"], [0.1, 0.2, 0.30000000000000004]])
def test_single_and_edge_columns(values: list[object]) -> None:
    entries: list[Entry] = [(T0 + i, T0 + i, {"m": v}, None) for i, v in enumerate(values)]
    assert decode(encode(entries)) == entries


def test_an_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        decode(b"\x09" + encode(hour_of_readings()[:2])[1:])
