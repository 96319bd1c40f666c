"""`edge-gateway device add ID`: append a [[devices]] table to a config, its comments and layout kept.

The password is asked twice (or read as one line from stdin with --password-stdin) and stored as an argon2
hash. The new file is validated whole before it replaces the old one (same mode and owner), so a running
gateway picks it up with `systemctl reload edge-gateway` or keeps its config if anything is wrong.
tomlkit (which keeps comments) is imported here only: the daemon never loads it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Any

from gateway.cli.common import (
    COMMAND_HELP,
    EXIT_CONFIG,
    EXIT_FAILED,
    add_config_option,
    fail,
    load_or_report,
    read_password,
)
from gateway.cli.toml_layout import DEVICES_NOTE, tables


def register(sub: Any) -> None:
    device: argparse.ArgumentParser = sub.add_parser(
        "device", help=COMMAND_HELP["device"],
        description="Manage the devices of a config file.",
    )
    actions = device.add_subparsers(dest="action", required=True, metavar="ACTION")
    add: argparse.ArgumentParser = actions.add_parser(
        "add", help="append a device to the config (asks for its password)",
        description="Append a [[devices]] table to the config, keeping its comments. Asks for the device's "
                    "password twice (or reads one line from stdin with --password-stdin) and stores its argon2 "
                    "hash. Then: systemctl reload edge-gateway.",
    )
    add.add_argument("id", help="the device id (its MQTT username)")
    add_config_option(add)
    add.add_argument("--kind", default="purifier", help="device kind (default purifier)")
    add.add_argument("--name", default="", help="a name for people")
    add.add_argument("--room", default="", help="where it is")
    add.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")
    add.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gateway.settings import DEVICE_ID_PATTERN

    path = Path(args.config)
    if not re.match(DEVICE_ID_PATTERN, args.id):
        return fail(f"{args.id!r} is not a device id (letters, digits and ._:- , at most 64, no wildcards)")
    loaded = load_or_report(path)
    if loaded is None:
        print(f"{path}: fix these first: the config is left as it is", file=sys.stderr)
        return EXIT_CONFIG
    if loaded.settings.device(args.id) is not None:
        return fail(f"{path}: device {args.id!r} is already configured")
    password = read_password(args.password_stdin, prompt=f"Password for {args.id}: ")
    if password is None:
        return EXIT_FAILED
    from gateway.demo_credentials import demo_password

    if password == demo_password(args.id):
        return fail("that is the demo's published password: choose the device's own")
    from gateway.core.passwords import hash_password

    text = append_device(path.read_text(encoding="utf-8"), {
        "id": args.id, "kind": args.kind, "name": args.name, "room": args.room,
        "password_hash": hash_password(password),
    })
    tmp = path.with_name(f".{path.name}.device-add")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by an interrupted run
    try:
        _write_like(tmp, text, path)
        if load_or_report(tmp) is None:
            print(f"{path}: not changed", file=sys.stderr)
            return EXIT_CONFIG
        tmp.replace(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    print(f"{path}: added device {args.id} ({args.kind}); apply it with: systemctl reload edge-gateway")
    return 0


def append_device(text: str, device: dict[str, str]) -> str:
    """`text` with one more [[devices]] table (fields left empty are omitted), right after the last one (or at
    the end): the comments introducing the next section stay with it, every other line stays as it is.

    tomlkit checks that `devices` is an array of tables (not an inline array) and renders the new table;
    the text is then placed by lines, since tomlkit would put it after the comments that follow the last
    table, i.e. between the next section and its introduction.
    """
    import tomlkit

    doc = tomlkit.parse(text)
    if "devices" in doc and not isinstance(doc["devices"], tomlkit.items.AoT):
        raise ValueError("`devices` is not written as [[devices]] tables: add the device by hand")
    table = tomlkit.table()
    for key, value in device.items():
        if value:
            table.add(key, value)
    rendered = tomlkit.dumps({"devices": [table]})
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    devices = [t for t in tables(lines) if t.name == "devices"]
    at = devices[-1].end if devices else _after_devices_note(lines)
    lines[at:at] = ["\n", rendered]
    return "".join(lines)


def _after_devices_note(lines: list[str]) -> int:
    """The line after the comment paragraph on [[devices]] tables (init-config writes one), else the end."""
    note = next((i for i, line in enumerate(lines) if line.startswith(DEVICES_NOTE)), None)
    if note is None:
        return len(lines)
    return next((i for i in range(note, len(lines)) if not lines[i].startswith("#")), len(lines))


def _write_like(tmp: Path, text: str, original: Path) -> None:
    """Write `tmp` with the mode and owner of `original` (a config holds hashes: 0640 root:edge-gateway)."""
    st = original.stat()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, st.st_mode & 0o777)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    tmp.chmod(st.st_mode & 0o777)  # os.open's mode was narrowed by the umask
    if os.geteuid() == 0:
        os.chown(tmp, st.st_uid, st.st_gid)
