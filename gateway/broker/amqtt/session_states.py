"""A small state holder for amqtt's sessions, in place of one `transitions.Machine` per session.

amqtt 0.12 gives every Session its own transitions.Machine (three states, five transitions, callbacks
and trigger methods bound to it): ~16 KB of a session's ~23 KB, 1.6 MB for 100 purifiers (measured
with tracemalloc). amqtt uses four things of it: `state`, `is_connected()`, and the triggers
`connect()` (which raises MachineError when already connected: amqtt's takeover path relies on it) and
`disconnect()` (allowed from every state). This class provides exactly those, with the same enter
callbacks, and `tests/unit/test_session_states.py` checks it against a real Machine-backed session.

Pinned to amqtt 0.12 like the rest of this package: `install()` replaces `Session._init_states` (for every
Session of the process: the embedded broker installs it when it is built, after compat.py checked amqtt).
"""

from __future__ import annotations

from amqtt.session import Session
from transitions import MachineError

AMQTT_INIT_STATES = Session._init_states  # amqtt's own, kept for the parity test


class SessionStates:
    __slots__ = ("_session", "state")

    def __init__(self, session: Session) -> None:
        self.state = "new"
        self._session = session

    def is_connected(self) -> bool:
        return self.state == "connected"

    def connect(self) -> bool:
        if self.state == "connected":
            raise MachineError("Can't trigger event connect from state connected!")
        self.state = "connected"
        self._session._on_enter_connected()
        return True

    def disconnect(self) -> bool:
        self.state = "disconnected"
        self._session._on_enter_disconnected()
        return True


def _init_states(session: Session) -> None:
    session.transitions = SessionStates(session)  # type: ignore[assignment]


# What it stands in for: compat.py checks amqtt's signature through this once ours is installed.
_init_states.__wrapped__ = AMQTT_INIT_STATES  # type: ignore[attr-defined]


def install() -> None:
    """Make every Session created from now on use SessionStates (idempotent)."""
    Session._init_states = _init_states  # type: ignore[method-assign]
