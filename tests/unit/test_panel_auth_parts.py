"""The panel's login parts on their own: the [[users]]/[panel] config, sessions and the login limiter on a
ManualClock, the chart series query on SQLite, and the redirect target check."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.core.clock import ManualClock
from gateway.core.errors import ConfigError
from gateway.settings import load_settings
from gateway.web.auth import LoginLimiter, Sessions
from gateway.web.panel.login import safe_next
from tests.fixtures.gateway import cheap_hash, write_config


def _load(tmp_path: Path, extra: str) -> list[str]:
    try:
        load_settings(write_config(tmp_path, devices=(), extra=extra))
    except ConfigError as exc:
        return exc.errors
    return []


def test_users_and_panel_settings_are_checked_and_named(tmp_path: Path) -> None:
    good = cheap_hash("pw")
    assert _load(tmp_path, f'[[users]]\nname = "a"\nrole = "admin"\npassword_hash = "{good}"') == []
    errors = _load(tmp_path, f'[[users]]\nname = "a"\npassword_hash = "{good}"\n'
                             f'[[users]]\nname = "a"\npassword_hash = "{good}"')
    assert len(errors) == 1 and "users: " in errors[0] and "unique, repeated: a" in errors[0]
    errors = _load(tmp_path, '[[users]]\nname = "a"\nrole = "root"\npassword_hash = "plain"')
    assert any("users.0.role" in e for e in errors) and any("users.0.password_hash" in e for e in errors)
    errors = _load(tmp_path, '[panel]\ncertfile = "/nonexistent.pem"')
    assert len(errors) == 1 and "certfile and keyfile go together" in errors[0]
    errors = _load(tmp_path, '[panel]\n[[panel.api_tokens]]\nname = "t"\ntoken_sha256 = "secret"')
    assert len(errors) == 1 and "panel.api_tokens.0.token_sha256" in errors[0] and "sha256sum" in errors[0]
    digest = hashlib.sha256(b"x").hexdigest()
    assert _load(tmp_path, f'[panel]\n[[panel.api_tokens]]\nname = "t"\ntoken_sha256 = "{digest}"') == []


def test_sessions_end_when_idle_or_too_old_and_the_oldest_goes_first() -> None:
    clock = ManualClock()
    sessions = Sessions(idle_s=600, max_s=3600, limit=2, clock=clock)
    a = sessions.create("a", "viewer")
    assert a.sid != a.csrf and len(a.sid) >= 40
    clock.advance(599)
    assert sessions.alive(a.sid)  # not a use: the idle time still counts from the login
    clock.advance(2)
    assert sessions.get(a.sid) is None and len(sessions) == 0
    b = sessions.create("b", "viewer")
    c = sessions.create("c", "viewer")
    d = sessions.create("d", "viewer")  # over the limit: b goes
    assert sessions.get(b.sid) is None and sessions.get(c.sid) is c and sessions.get(d.sid) is d
    for _ in range(6):
        clock.advance(590)
        assert sessions.get(c.sid) is c  # used: the idle limit never strikes...
    clock.advance(590)
    assert sessions.get(c.sid) is None  # ...the maximum age does


def test_the_login_limiter_counts_failures_per_source_in_a_sliding_window() -> None:
    clock = ManualClock()
    limiter = LoginLimiter(attempts=3, window_s=60, clock=clock)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") is None
        limiter.failed("10.0.0.1")
        clock.advance(10)
    assert limiter.retry_after("10.0.0.1") == pytest.approx(30)  # the first failure leaves the window in 30 s
    assert limiter.retry_after("10.0.0.2") is None  # another source is not affected
    clock.advance(30)
    assert limiter.retry_after("10.0.0.1") is None
    limiter.failed("10.0.0.1")
    limiter.succeeded("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") is None


@pytest.mark.parametrize(("target", "kept"), [
    ("/device/AP-01?x=1", True), ("/", True), ("//evil.example/", False), ("https://evil.example/", False),
    ("/\\evil.example", False), ("javascript:alert(1)", False), ("", False)])
def test_login_redirects_only_to_paths_of_this_server(target: str, kept: bool) -> None:
    assert safe_next(target) == (target if kept else "/")
