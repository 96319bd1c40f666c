"""The `edge-gateway` command line: one module per command, each with `register(subparsers)`.

A command module imports only the standard library at its top; what it needs to do its work (the daemon,
aiohttp, tomlkit...) it imports when it runs, so `run` never pays for another command's libraries. Only the
command named on the command line is imported at all (the others are listed by name and help, for --help):
the daemon keeps the other commands' code out of its memory (~0.3 MB measured).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# structlog renders exceptions with rich when it can import it (rich comes with amqtt's command-line
# dependencies): 3-4 MB of RSS in a daemon with a 60 MB budget, for colours nobody sees in a journal.
# The daemon logs plain tracebacks instead. (Set before anything imports structlog.)
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from gateway import __version__  # noqa: E402
from gateway.cli.common import COMMAND_HELP  # noqa: E402

# command name -> its module in gateway.cli
COMMANDS = {
    "run": "run",
    "check-config": "check_config",
    "status": "status",
    "demo": "demo",
    "init-config": "init_config",
    "device": "device_add",
    "hash-password": "hash_password",
    "backup": "backup",
    "export": "export",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command listed; the arguments of the one named in `argv` (if any) registered
    by its module, the only command module imported."""
    parser = argparse.ArgumentParser(prog="edge-gateway", description="Local hub for air purifiers and sensors.")
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    words = sys.argv[1:] if argv is None else argv
    chosen = next((word for word in words if not word.startswith("-")), None)
    for name, module in COMMANDS.items():
        if name == chosen:
            importlib.import_module(f"gateway.cli.{module}").register(sub)
        else:
            sub.add_parser(name, help=COMMAND_HELP[name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    code: int = args.handler(args)
    return code
