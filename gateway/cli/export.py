"""`edge-gateway export`: readings to CSV or JSON Lines, for a time range and a set of devices.

Reads the database beside a running gateway (WAL). The range is half-open, [--since, --until), on the
reading's own time, so consecutive exports (one per day) neither miss nor repeat a reading. Times are
ISO-8601 (UTC unless they carry an offset) or epoch seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import Generator, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from gateway.cli.common import COMMAND_HELP, EXIT_CONFIG, EXIT_FAILED, add_config_option, fail
from gateway.cli.database import add_database_options, database_path, read_only
from gateway.store.compaction import hour_of
from gateway.store.raw_readings import Row, all_rows, has_blocks
from gateway.store.reading_blocks import decode


def timestamp(text: str) -> float:
    """Epoch seconds from `1764763200`, `2026-12-03`, `2026-12-03T12:00` (UTC) or `...+01:00`."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time or epoch seconds: {text!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "export", help=COMMAND_HELP["export"],
        description="Write readings as CSV (one column per metric) or JSON Lines, oldest first, for the range "
                    "[--since, --until) of the readings' own time (ISO-8601, UTC unless an offset is given, or "
                    "epoch seconds) and the devices given (default: all).",
    )
    add_config_option(parser)
    add_database_options(parser)
    parser.add_argument("--device", action="append", default=[], help="a device id (repeat for more; default all)")
    parser.add_argument("--since", type=timestamp, default=None, help="from this time, inclusive (default: the start)")
    parser.add_argument("--until", type=timestamp, default=None, help="up to this time, exclusive (default: no end)")
    parser.add_argument("--format", choices=["csv", "jsonl"], default="csv", help="csv (default) or jsonl")
    parser.add_argument("--output", "-o", type=Path, default=None, help="file to write (default: standard output)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    db = database_path(args)
    if db is None:
        return EXIT_CONFIG
    try:
        with read_only(db) as conn, _opened(args.output) as out:
            # One snapshot for rows, blocks and names: a compaction step of the running gateway moves rows into
            # their block between two statements otherwise (those readings would come out twice).
            conn.execute("BEGIN")
            rows = _readings(conn, args.device, args.since, args.until)
            try:
                if args.format == "csv":
                    count = write_csv(out, rows, _metric_names(conn, args.device, args.since, args.until))
                else:
                    count = write_jsonl(out, rows)
            finally:
                rows.close()
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly; stdout goes to /dev/null so the exit flush is silent.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (OSError, sqlite3.Error) as exc:
        return fail(f"export from {db} failed: {exc}")
    print(f"exported {count} readings", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _opened(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with path.open("w", encoding="utf-8", newline="") as out:
        yield out


def _where(devices: list[str], since: float | None, until: float | None,
           table: str = "r", time: str = "ts") -> tuple[str, list[Any]]:
    clauses = [f"{table}.{time} >= ?", f"{table}.{time} < ?"]
    params: list[Any] = [float("-inf") if since is None else since, float("inf") if until is None else until]
    if devices:
        clauses.append(f"{table}.device_id IN ({', '.join('?' * len(devices))})")
        params += devices
    return " AND ".join(clauses), params


def _block_where(devices: list[str], since: float | None, until: float | None) -> tuple[str, list[Any]]:
    """Compacted device-hours that may hold readings of the range (an hour starts before its readings)."""
    return _where(devices, None if since is None else float(hour_of(since)), until, "b", "hour")


def _readings(
    conn: sqlite3.Connection, devices: list[str], since: float | None, until: float | None
) -> Generator[Row, None, None]:
    """The readings in the range, rows and compacted, oldest first, streamed (an hour of blocks held at most)."""
    where, params = _where(devices, since, until)
    lo, hi = params[0], params[1]
    return all_rows(conn, where, params, *_block_where(devices, since, until), lo, hi)


def _metric_names(conn: sqlite3.Connection, devices: list[str], since: float | None, until: float | None) -> list[str]:
    where, params = _where(devices, since, until)
    compacted = has_blocks(conn)  # not in a database of an earlier gateway (not migrated)
    sql = (f"SELECT DISTINCT m.key FROM {'raw_rows' if compacted else 'readings'} AS r, json_each(r.metrics) AS m"
           f" WHERE {where}")
    names = {str(key) for (key,) in conn.execute(sql, params)}
    if not compacted:
        return sorted(names)
    block_where, block_params = _block_where(devices, since, until)
    for (data,) in conn.execute(f"SELECT b.data FROM reading_hours AS b WHERE {block_where}", block_params):
        names.update(name for ts, _, metrics, _ in decode(data) if params[0] <= ts < params[1] for name in metrics)
    return sorted(names)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_csv(out: IO[str], rows: Iterable[Row], metrics: list[str]) -> int:
    """Columns deviceId, time (ISO-8601 UTC), ts, receivedAt, then one per metric (empty where a reading has
    none; booleans as true/false)."""
    import csv

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["deviceId", "time", "ts", "receivedAt", *metrics])
    count = 0
    for device_id, ts, received_at, text in rows:
        values = json.loads(text)
        writer.writerow([device_id, _iso(ts), ts, received_at,
                         *(_cell(values.get(name)) for name in metrics)])
        count += 1
    return count


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def write_jsonl(out: IO[str], rows: Iterable[Row]) -> int:
    """One object a line: {"deviceId", "time", "ts", "receivedAt", "metrics"} (metrics as stored)."""
    count = 0
    for device_id, ts, received_at, text in rows:
        out.write(f'{{"deviceId": {json.dumps(device_id)}, "time": "{_iso(ts)}", "ts": {ts!r}, '
                  f'"receivedAt": {received_at!r}, "metrics": {text}}}\n')
        count += 1
    return count
