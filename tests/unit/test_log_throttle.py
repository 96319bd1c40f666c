"""LogThrottle: one line per kind and interval, the next line says how many were left out."""

from __future__ import annotations

from gateway.core.throttle import LogThrottle


def test_one_line_per_interval_with_the_count_left_out() -> None:
    now = [0.0]
    throttle = LogThrottle(60.0, now=lambda: now[0])
    assert throttle.allow("a") == 0
    assert [throttle.allow("a") for _ in range(5)] == [None] * 5
    assert throttle.allow("b") == 0  # kinds are apart
    now[0] = 59.9
    assert throttle.allow("a") is None
    now[0] = 60.0
    assert throttle.allow("a") == 6
    assert throttle.allow("a") is None
