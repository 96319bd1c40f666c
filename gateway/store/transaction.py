"""One batch's transaction on a sqlite3 connection: its planned rows as bound statements.

Two forms of the same writes (sql.py): per row for a trickle, which the writer commits on the event
loop's thread (prepared statements beat ~0.5 ms of CPU handing a few rows to the worker thread and
back); bulk for a batch, a statement per table (per BULK_MAX_ROWS rows), run on the worker thread in
one hand-off. The parameters are built by the caller on the loop's thread; `run` only executes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from gateway.store.sql import Write, bulk_sizes, bulk_sql

# (statement, parameters, many): `many` runs executemany over a sequence of rows.
Statement = tuple[str, Any, bool]
Steps = Sequence[tuple[Write, Sequence[Sequence[Any]]]]


def per_row(steps: Steps) -> list[Statement]:
    return [(write.row_sql, rows, True) for write, rows in steps]


def bulk(steps: Steps, max_params: int) -> list[Statement]:
    """`max_params`: SQLite's limit of parameters per statement (SQLITE_LIMIT_VARIABLE_NUMBER)."""
    statements: list[Statement] = []
    for write, rows in steps:
        if write.bulk is None:
            statements.append((write.row_sql, rows, True))
            continue
        start = 0
        for real, size in bulk_sizes(len(rows), write.width, max_params):
            params = [value for row in rows[start:start + real] for value in row]
            if size > real:
                params += [None] * ((size - real) * write.width)
            params.append(real)
            statements.append((bulk_sql(write, size), params, False))
            start += real
    return statements


def run(db: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    """BEGIN, the statements, COMMIT; rolled back if any fails (the error is raised)."""
    db.execute("BEGIN")
    try:
        for sql, params, many in statements:
            if many:
                db.executemany(sql, params)
            else:
                db.execute(sql, params)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
