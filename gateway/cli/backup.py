"""`edge-gateway backup FILE`: a consistent copy of the database, taken while the gateway runs.

SQLite's online backup API, in one step: the copy is one read transaction's snapshot, and under WAL that
read blocks no writer (a backup in small steps would restart whenever the daemon commits, i.e. forever).
The copy is checked (`PRAGMA quick_check`) before it is renamed to FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from gateway.cli.common import COMMAND_HELP, EXIT_CONFIG, add_config_option, fail
from gateway.cli.database import add_database_options, database_path, read_only


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "backup", help=COMMAND_HELP["backup"],
        description="Copy the gateway's database to FILE with SQLite's online backup API; the gateway keeps "
                    "running and writing. The copy is checked before it gets its name.",
    )
    parser.add_argument("file", type=Path, help="where to write the copy")
    add_config_option(parser)
    add_database_options(parser)
    parser.add_argument("--force", action="store_true", help="replace FILE if it exists")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    source = database_path(args)
    if source is None:
        return EXIT_CONFIG
    target: Path = args.file.absolute()
    if target.exists() and not args.force:
        return fail(f"{target} exists (--force replaces it)")
    if target == source:
        return fail("the backup cannot replace the database itself")
    try:
        readings = backup(source, target)
    except (OSError, sqlite3.Error) as exc:
        return fail(f"backup of {source} failed: {exc}")
    print(f"{target}: backup of {source} ({target.stat().st_size} bytes, {readings} readings)")
    return 0


def backup(source: Path, target: Path) -> int:
    """Copy `source` to `target` (via a temporary file beside it); returns the copy's number of readings."""
    tmp = target.with_name(f".{target.name}.partial")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        with read_only(source) as src:
            dst = sqlite3.connect(tmp)
            try:
                src.backup(dst)  # pages=-1: the whole database in one step, one consistent snapshot
                dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
                check = dst.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(f"the copy fails quick_check: {check}")
                readings = int(dst.execute("SELECT count(*) FROM readings").fetchone()[0])
            finally:
                dst.close()
        tmp.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return readings
