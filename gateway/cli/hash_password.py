"""`edge-gateway hash-password`: print an argon2 hash of a password (a device's, or a panel user's)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.common import EXIT_FAILED, read_password


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "hash-password", help="print an argon2 hash of a password (a device's, or a panel user's)",
        description="Print an argon2 hash of a password (for a [[devices]] or [[users]] password_hash).",
    )
    parser.add_argument("--password", help="the password (default: prompt, or read one line from stdin)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gateway.core.passwords import hash_password

    password = args.password
    if password is None:
        password = read_password(from_stdin=False, prompt="Password: ")
        if password is None:
            return EXIT_FAILED
    if not password:
        print("empty password refused", file=sys.stderr)
        return EXIT_FAILED
    print(hash_password(password))
    return 0
