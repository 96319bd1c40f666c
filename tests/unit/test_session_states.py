"""Our light session states behave like the transitions.Machine amqtt 0.12 gives each session."""

from __future__ import annotations

import pytest
from amqtt.session import Session
from transitions import MachineError

from gateway.broker.amqtt import session_states

STEPS = ["connect", "connect", "disconnect", "disconnect", "connect", "disconnect"]


def _walk(session: Session, steps: list[str]) -> list[tuple[str, str, bool, bool, bool]]:
    seen = []
    for step in steps:
        try:
            getattr(session.transitions, step)()
            outcome = "ok"
        except MachineError:
            outcome = "refused"
        seen.append((
            outcome,
            session.transitions.state,
            session.transitions.is_connected(),
            session.last_connect_time is not None,
            session.last_disconnect_time is not None,
        ))
    return seen


@pytest.mark.parametrize("start", [[], ["disconnect"]], ids=["new", "offline-session"])
def test_light_states_match_amqtts_machine(start: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The broker may have installed ours already (earlier tests): build the reference with amqtt's own.
    monkeypatch.setattr(Session, "_init_states", session_states.AMQTT_INIT_STATES)  # undone after the test
    reference = Session()
    assert not isinstance(reference.transitions, session_states.SessionStates)
    expected = _walk(reference, start + STEPS)

    session_states.install()
    light = Session()
    assert isinstance(light.transitions, session_states.SessionStates)
    assert _walk(light, start + STEPS) == expected
    assert ("refused", "connected", True, True, False) in expected  # a second connect is refused, as amqtt needs
    assert repr(light).endswith("state=disconnected)")
