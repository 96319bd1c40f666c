"""The `edge-gateway` command line: one module per command, each with `register(subparsers)`.

A command module imports only the standard library at its top; what it needs to do its work (the daemon,
aiohttp, tomlkit...) it imports when it runs, so `run` never pays for another command's libraries.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# structlog renders exceptions with rich when it can import it (rich comes with amqtt's command-line
# dependencies): 3-4 MB of RSS in a daemon with a 60 MB budget, for colours nobody sees in a journal.
# The daemon logs plain tracebacks instead. (Set before anything imports structlog.)
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from gateway import __version__  # noqa: E402
from gateway.cli import (  # noqa: E402
    backup,
    check_config,
    demo,
    device_add,
    export,
    hash_password,
    init_config,
    run,
    status,
)

COMMANDS = (run, check_config, status, demo, init_config, device_add, hash_password, backup, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-gateway", description="Local hub for air purifiers and sensors.")
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code
