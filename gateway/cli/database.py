"""The gateway's database as the operator commands read it: read-only, beside a running daemon (WAL).

Run as root (sudo) while the daemon is stopped, SQLite may create the `-shm`/`-wal` files itself; they are
handed back to the database's owner afterwards, or the daemon (user edge-gateway) could not open them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from gateway.cli.common import load_or_report


def add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=None, help="the database file (default: the config's)")


def database_path(args: argparse.Namespace) -> Path | None:
    """`--db`, or the config's database (None after printing the config's errors)."""
    if args.db is not None:
        return Path(args.db).absolute()
    loaded = load_or_report(args.config)
    return None if loaded is None else loaded.db_path


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    if not path.is_file():
        raise FileNotFoundError(f"no database at {path} (set gateway.data_dir in the config, or give --db)")
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        yield conn
    finally:
        conn.close()
        restore_ownership(path)


def restore_ownership(path: Path) -> None:
    """Give `-wal`/`-shm` files root just created back to the database file's owner."""
    if os.geteuid() != 0:
        return
    owner = path.stat()
    for suffix in ("-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        with contextlib.suppress(FileNotFoundError):
            if part.stat().st_uid == 0 and owner.st_uid != 0:
                os.chown(part, owner.st_uid, owner.st_gid)


def table_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None
