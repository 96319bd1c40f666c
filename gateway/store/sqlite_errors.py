"""Which refusals of SQLite are worth waiting out: the store writer retries a transient one with back-off and
commits the batch record by record after any other (one record the database refuses must not hold up the rest).
"""

from __future__ import annotations

import sqlite3


def is_locked(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock: usually someone's short transaction, retried soon."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def is_transient(exc: sqlite3.Error) -> bool:
    """Locked, busy, a full disk or an I/O error: the same batch may commit later."""
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in text for word in ("locked", "busy", "full", "disk i/o", "unable to open")
    )
