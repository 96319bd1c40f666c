"""`edge-gateway hash-password`: print an argon2 hash of a password (a device's, or a panel user's).

`--for mosquitto` prints Mosquitto's PBKDF2-SHA512 form instead, a device's `password_hash_mosquitto` for
`broker.backend = "mosquitto"` (Mosquitto cannot check argon2).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.common import COMMAND_HELP, EXIT_FAILED, read_password


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "hash-password", help=COMMAND_HELP["hash-password"],
        description="Print an argon2 hash of a password (for a [[devices]] or [[users]] password_hash).",
    )
    parser.add_argument("--password", help="the password (default: prompt, or read one line from stdin)")
    parser.add_argument("--for", dest="target", choices=("gateway", "mosquitto"), default="gateway",
                        help="gateway: argon2 (password_hash, the default); mosquitto: Mosquitto's PBKDF2-SHA512 "
                             "(a device's password_hash_mosquitto for broker.backend = \"mosquitto\")")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    password = args.password
    if password is None:
        password = read_password(from_stdin=False, prompt="Password: ")
        if password is None:
            return EXIT_FAILED
    if not password:
        print("empty password refused", file=sys.stderr)
        return EXIT_FAILED
    if args.target == "mosquitto":
        from gateway.core.passwords_mosquitto import hash_password_mosquitto

        print(hash_password_mosquitto(password))
    else:
        from gateway.core.passwords import hash_password

        print(hash_password(password))
    return 0
