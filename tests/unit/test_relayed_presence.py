"""Presence of relayed devices as a pure state (gateway/ingest/relayed_presence.py): heard, silent, deadlines."""

from __future__ import annotations

from gateway.ingest.relayed_presence import RelayedPresence

T0 = 1_763_800_000.0


def test_a_device_is_new_once_and_silent_after_offline_after_unless_another_link_heard_it() -> None:
    seen: dict[str, float] = {}
    presence = RelayedPresence(300.0, seen.get)
    assert presence.heard(["T-1", "T-2"], T0) == ["T-1", "T-2"]
    assert presence.heard(["T-1"], T0 + 100) == []  # online already
    assert presence.next_deadline() == T0 + 300.0
    assert presence.silent(T0 + 299.9) == []
    seen["T-2"] = T0 + 50  # heard by another link since
    assert presence.silent(T0 + 300.0) == []
    assert presence.next_deadline() == T0 + 350.0
    assert presence.silent(T0 + 400.0) == ["T-1", "T-2"]
    assert presence.online() == [] and presence.next_deadline() is None
    assert presence.heard(["T-1"], T0 + 500) == ["T-1"]  # back: online again


def test_an_older_time_does_not_move_a_device_back() -> None:
    presence = RelayedPresence(60.0, lambda device_id: None)
    presence.heard(["T-1"], T0 + 10)
    presence.heard(["T-1"], T0)
    assert presence.next_deadline() == T0 + 70.0
