"""What the commands share: exit statuses, the config option, loading a config and reporting its errors."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.settings import LoadedSettings

EXIT_FAILED = 1  # the command could not do what it was asked (a refused password, a missing database...)
EXIT_CONFIG = 2  # the config is invalid (or holds demo credentials, for `run`)
EXIT_STARTUP = 3  # a port in use, an unwritable data dir, a database that cannot be opened, a wrong library
DEFAULT_CONFIG = "/etc/edge-gateway/gateway.toml"
EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.example.toml"

# each command's one-line help, for the command list (gateway/cli/__init__.py) and its own parser
COMMAND_HELP = {
    "run": "run the gateway daemon",
    "check-config": "validate a config file; exit 2 listing every error",
    "status": "a gateway's health, devices online, backlog and last sync",
    "demo": "run the gateway with simulated purifiers (no cloud needed)",
    "init-config": "write a production config: generated gateway id, no devices",
    "device": "manage the config's devices (device add)",
    "hash-password": "print an argon2 hash of a password (a device's, or a panel user's)",
    "backup": "copy the database while the gateway runs (SQLite online backup)",
    "export": "readings to CSV or JSON Lines for a time range",
}


def add_config_option(parser: argparse.ArgumentParser, default: str = DEFAULT_CONFIG) -> None:
    parser.add_argument("--config", default=default, help=f"config file (default {default})")


def load_or_report(path: str | Path) -> LoadedSettings | None:
    """The validated config, or None after printing each of its errors (`FILE: field.path: message`)."""
    from gateway.core.errors import ConfigError
    from gateway.settings import load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None


def fail(message: str) -> int:
    print(f"edge-gateway: {message}", file=sys.stderr)
    return EXIT_FAILED


def read_password(from_stdin: bool, prompt: str = "Device password: ") -> str | None:
    """A password typed twice on a terminal, or one line of stdin (with --password-stdin, or without a tty).

    None (after saying why) for two different entries or an empty password.
    """
    if from_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(prompt)
        if getpass.getpass("Again: ") != password:
            print("passwords differ", file=sys.stderr)
            return None
    if not password:
        print("empty password refused", file=sys.stderr)
        return None
    return password
