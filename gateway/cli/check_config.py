"""`edge-gateway check-config FILE`: validate a config, listing every error with its field path."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.common import COMMAND_HELP, EXIT_CONFIG, load_or_report


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "check-config", help=COMMAND_HELP["check-config"],
        description="Validate a config file: every error as `FILE: field.path: message`, exit status 2.",
    )
    parser.add_argument("path", help="the config file")
    parser.add_argument("--production", action="store_true",
                        help="also fail (exit 2) on the demo's credentials, which `run` refuses")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.path)
    if loaded is None:
        return EXIT_CONFIG
    from gateway.demo_credentials import refusal

    s = loaded.settings
    demo = refusal(args.path, s)
    if demo and args.production:
        for line in demo:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.path}: OK (gateway {s.gateway.id}, {len(s.device_kinds())} devices, data in {loaded.data_dir})")
    if demo:
        print(f"{args.path}: note: demo credentials: `edge-gateway demo` uses this config, `run` refuses it",
              file=sys.stderr)
    return 0
