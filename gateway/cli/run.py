"""`edge-gateway run`: the daemon (what the systemd unit starts)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from gateway.cli.common import COMMAND_HELP, EXIT_CONFIG, EXIT_STARTUP, add_config_option, load_or_report


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "run", help=COMMAND_HELP["run"],
        description="Run the gateway daemon. It refuses a config holding the demo's credentials (exit 2).",
    )
    add_config_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG
    from gateway.app import run_gateway
    from gateway.core.errors import ConfigError, IncompatibleLibraryError, StartupError
    from gateway.logs import configure_logging
    from gateway.malloc_tuning import limit_arenas

    limit_arenas(1)  # before any thread exists: see gateway/malloc_tuning.py
    configure_logging(loaded.settings.logging.level, loaded.settings.logging.format)
    try:
        asyncio.run(run_gateway(loaded))
    except ConfigError as exc:  # demo credentials: the Gateway refuses them outside the demo
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except (StartupError, IncompatibleLibraryError) as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0
