"""The store's two private aiosqlite names are checked when it opens: a clear error, never a silent fallback."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from gateway.core.errors import IncompatibleLibraryError
from gateway.store import aiosqlite_access


async def test_the_installed_aiosqlite_passes_and_the_worker_thread_runs_a_function(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / "db") as conn:
        aiosqlite_access.check(conn)
        raw = aiosqlite_access.raw_connection(conn)
        assert await aiosqlite_access.on_worker_thread(conn, lambda c: c.execute("SELECT 41 + 1").fetchone(), raw) \
            == (42,)


async def test_a_missing_private_name_is_named_in_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with aiosqlite.connect(tmp_path / "db") as conn:
        with monkeypatch.context() as patch:  # undone before the connection closes (close uses it)
            patch.delattr(aiosqlite.Connection, "_execute")
            with pytest.raises(IncompatibleLibraryError) as err:
                aiosqlite_access.check(conn)
    assert "aiosqlite 0.22.1" in str(err.value) and "Connection._execute" in str(err.value)


async def test_another_version_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiosqlite_access, "version", lambda name: "0.23.0")
    async with aiosqlite.connect(tmp_path / "db") as conn:
        with pytest.raises(IncompatibleLibraryError, match=r"version 0\.23\.0"):
            aiosqlite_access.check(conn)
