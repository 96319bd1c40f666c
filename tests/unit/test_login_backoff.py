"""LoginBackoff: failed logins per source slow down the next attempts from it."""

from __future__ import annotations

from gateway.broker.login_backoff import LoginBackoff


def test_the_first_failures_are_free_then_the_delay_doubles_to_the_cap() -> None:
    backoff = LoginBackoff(free=2, base=0.5, cap=3.0)
    assert [backoff.delay(n) for n in range(7)] == [0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_attempts_from_a_source_in_back_off_are_spaced_even_when_they_come_together() -> None:
    backoff = LoginBackoff(free=1, base=1.0, cap=8.0)
    assert backoff.wait_before_check("10.0.0.9", 0.0) == 0.0
    backoff.failed("10.0.0.9", 0.0)  # one failure: the next attempt waits 1 s
    assert backoff.wait_before_check("10.0.0.9", 0.2) == 0.8
    assert backoff.wait_before_check("10.0.0.9", 0.2) == 1.8  # a parallel attempt: after the first one's turn
    assert backoff.wait_before_check("10.0.0.7", 0.2) == 0.0  # other sources are not slowed
    backoff.failed("10.0.0.9", 1.0)
    backoff.failed("10.0.0.9", 2.0)  # three failures: 4 s apart from now on
    assert backoff.wait_before_check("10.0.0.9", 2.0) == 4.0


def test_success_clears_and_silence_forgets() -> None:
    backoff = LoginBackoff(free=0, base=1.0, forget_after=60.0)
    backoff.failed("a", 0.0)
    backoff.succeeded("a")
    assert backoff.wait_before_check("a", 0.1) == 0.0
    backoff.failed("b", 0.0)
    assert backoff.wait_before_check("b", 61.0) == 0.0
    assert backoff.failures("b") == 0


def test_the_table_is_bounded() -> None:
    backoff = LoginBackoff(max_sources=3)
    for i in range(5):
        backoff.failed(f"10.0.0.{i}", float(i))
    assert [backoff.failures(f"10.0.0.{i}") for i in range(5)] == [0, 0, 1, 1, 1]
