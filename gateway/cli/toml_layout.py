"""Where the tables of a TOML file are, line by line: for edits that must keep every comment where it is.

A comment block just before a table header introduces that table (the example config's convention), so a
table's own lines end at its last line that is neither blank nor a comment.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# The comment paragraph that introduces the [[devices]] tables in the example and in init-config's configs.
DEVICES_NOTE = "# One [[devices]] table per device."
_HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?")


class Table(NamedTuple):
    name: str  # "devices", "ble.devices.gatt"
    start: int  # the header's line
    end: int  # one past its last line that is neither blank nor a comment


def tables(lines: list[str]) -> list[Table]:
    headers = [(i, m.group(1)) for i, line in enumerate(lines) if (m := _HEADER.match(line))]
    found = []
    for n, (start, name) in enumerate(headers):
        end = headers[n + 1][0] if n + 1 < len(headers) else len(lines)
        while end - 1 > start and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
            end -= 1
        found.append(Table(name, start, end))
    return found
