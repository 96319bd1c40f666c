"""The two private names of aiosqlite the store writer uses, in one place, checked when the store opens.

aiosqlite 0.22.1 (pinned exactly in pyproject.toml):

* ``Connection._conn``: the sqlite3 connection its worker thread owns. The writer reads SQLite's parameter
  limit from it (``getlimit``), interrupts a statement still running when close() runs out of time
  (``interrupt``, thread-safe), and commits a quiet trickle on the event loop's thread (the connection is
  opened with ``check_same_thread=False``; never at the same time as the worker thread).
* ``Connection._execute(fn, *args)``: runs ``fn(*args)`` on the worker thread and awaits its result. A batch
  goes to the thread as one call (one thread hand-off per batch) instead of one per statement.

No public API offers either (aiosqlite's public calls are one statement each). `check()` runs when the store
opens and raises IncompatibleLibraryError naming the version found and each name that is missing or changed:
never a silent fallback.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Callable
from importlib.metadata import version
from typing import Any, TypeVar, cast

import aiosqlite

from gateway.core.errors import IncompatibleLibraryError

PINNED = "0.22.1"
T = TypeVar("T")


def check(conn: aiosqlite.Connection) -> None:
    problems: list[str] = []
    found = version("aiosqlite")
    if found != PINNED:
        problems.append(f"version {found}, the store was written against {PINNED}")
    raw = getattr(conn, "_conn", None)
    if not isinstance(raw, sqlite3.Connection):
        problems.append(f"Connection._conn is {type(raw).__name__}, expected the sqlite3.Connection")
    execute = getattr(conn, "_execute", None)
    if execute is None or not inspect.iscoroutinefunction(execute):
        problems.append("Connection._execute(fn, *args) is missing or not a coroutine function")
    else:
        params = list(inspect.signature(execute).parameters.values())
        if not params or params[0].name != "fn" or not any(p.kind is p.VAR_POSITIONAL for p in params):
            problems.append(f"Connection._execute{inspect.signature(execute)} is not (fn, *args, ...)")
    if problems:
        raise IncompatibleLibraryError("aiosqlite", found, problems)


def raw_connection(conn: aiosqlite.Connection) -> sqlite3.Connection:
    """The sqlite3 connection under `conn` (checked by `check()` at open)."""
    raw: sqlite3.Connection = conn._conn
    return raw


async def on_worker_thread(conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` on `conn`'s worker thread, in its order with the connection's other calls."""
    return cast(T, await conn._execute(fn, *args))  # type: ignore[no-untyped-call]
