"""The per-attempt history of one command: when each attempt left and how it ended.

A command's audit row is upserted by its commandId as it moves ``pending -> sent -> ...``; its
``attempt_log`` keeps one entry per attempt, so a retry does not overwrite what happened to the one
before it. Every attempt carries the same commandId and payload (CONTRACT section 1): the entries tell
when each left and why the next one was needed. Pure values, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

# How an attempt ended: None while it waits for its ack.
NO_ACK = "no-ack"  # its deadline passed without an ack (the next attempt follows, or the command times out)
NOT_SENT = "not-sent"  # the device's link could not send it (the executor retries at its deadline)


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int  # 1 for the first send
    sent_at: float
    result: str | None = None  # None | "no-ack" | "not-sent" | "acked" | "failed" | "cancelled"
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"attempt": self.number, "sentAt": self.sent_at, "result": self.result, "error": self.error}


AttemptLog = tuple[Attempt, ...]


def started(log: AttemptLog, number: int, at: float) -> AttemptLog:
    """A new attempt left; the one before it (if still open) ended without an ack."""
    return (*ended(log, NO_ACK), Attempt(number, at))


def ended(log: AttemptLog, result: str, error: str | None = None) -> AttemptLog:
    """The latest attempt's outcome, unless it already has one (a not-sent attempt stays not-sent)."""
    if not log or log[-1].result is not None:
        return log
    return (*log[:-1], replace(log[-1], result=result, error=error))


def not_sent(log: AttemptLog, number: int, error: str) -> AttemptLog:
    """Attempt `number` never left (the link raised); a later attempt keeps its own entry."""
    return tuple(replace(a, result=NOT_SENT, error=error) if a.number == number else a for a in log)


def log_to_json(log: AttemptLog) -> list[dict[str, Any]]:
    return [a.to_json() for a in log]


def log_from_json(data: object) -> AttemptLog:
    """The stored JSON list back into entries (rows written by this module; anything else: empty)."""
    if not isinstance(data, list):
        return ()
    out = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("attempt"), int) and isinstance(item.get("sentAt"),
                                                                                         int | float):
            out.append(Attempt(item["attempt"], float(item["sentAt"]), item.get("result"), item.get("error")))
    return tuple(out)
