"""`edge-gateway init-config FILE`: a production config: the example's settings and comments, a generated
gateway id, an explicit data dir, and no devices (the demo's are left out: their passwords are published).
install.sh writes /etc/edge-gateway/gateway.toml with it when that file is absent.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
from pathlib import Path
from typing import Any

from gateway.cli.common import COMMAND_HELP, EXAMPLE_CONFIG, EXIT_CONFIG, fail, load_or_report
from gateway.cli.toml_layout import DEVICES_NOTE, tables

_GATEWAY_ID = re.compile(r'^id = "[^"]*"', re.M)  # the first `id =` line: [gateway] comes first
_DATA_DIR = re.compile(r'^# data_dir = "[^"]*"', re.M)
# The example's demo devices: purifiers with published passwords, the demo's simulated BLE sensors.
DEMO_TABLES = ("devices", "ble.devices", "ble.devices.gatt")
_NO_DEVICES = """\
# One [[devices]] table per device. The device logs in with username = id and its own password, and may only
# use the topics device/{id}/... (see CONTRACT.md). None yet: the broker accepts no login. Add one with
#   sudo edge-gateway device add AP-01 --config %(config)s
# (it asks for the device's password and appends its table here), then: systemctl reload edge-gateway
# (The example's demo devices, its purifiers and BLE sensors, are left out of this file.)
"""


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "init-config", help=COMMAND_HELP["init-config"],
        description="Write a production config from the example (its comments too): a generated gateway id, "
                    "an explicit data dir and no devices. Refuses to overwrite a file.",
    )
    parser.add_argument("path", type=Path, help="the config file to write (mode 0640)")
    parser.add_argument("--example", type=Path, default=EXAMPLE_CONFIG, help=f"template (default {EXAMPLE_CONFIG})")
    parser.add_argument("--data-dir", type=Path, default=Path("/var/lib/edge-gateway"),
                        help="gateway.data_dir (default /var/lib/edge-gateway)")
    parser.add_argument("--gateway-id", default=None, help="gateway.id (default: gw- and 8 random hex digits)")
    parser.set_defaults(handler=run)


def production_config(example: str, *, gateway_id: str, data_dir: Path, config_path: Path) -> str:
    """The example's text with `gateway_id`, `data_dir` and none of its demo device tables."""
    if not (_GATEWAY_ID.search(example) and _DATA_DIR.search(example) and DEVICES_NOTE in example):
        raise ValueError("the example config no longer has the lines init-config edits "
                         '(id = "...", # data_dir = "...", # One [[devices]] table per device.)')
    text = _GATEWAY_ID.sub(f'id = "{gateway_id}"', example, count=1)
    text = _DATA_DIR.sub(f'data_dir = "{data_dir}"', text, count=1)
    lines = _without_tables(text.splitlines(keepends=True), DEMO_TABLES)
    start = next(i for i, line in enumerate(lines) if line.startswith(DEVICES_NOTE))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("#")), len(lines))
    lines[start:end] = [_NO_DEVICES % {"config": config_path}]
    return re.sub(r"\n{3,}", "\n\n", "".join(lines)).rstrip("\n") + "\n"


def _without_tables(lines: list[str], names: tuple[str, ...]) -> list[str]:
    """`lines` without the tables named (the comments introducing them and the next table stay)."""
    dropped = {i for table in tables(lines) if table.name in names for i in range(table.start, table.end)}
    return [line for i, line in enumerate(lines) if i not in dropped]


def run(args: argparse.Namespace) -> int:
    path: Path = args.path.absolute()
    if path.exists():
        return fail(f"{path} exists: init-config never overwrites a config")
    gateway_id = args.gateway_id or f"gw-{secrets.token_hex(4)}"
    try:
        example = args.example.read_text(encoding="utf-8")
        text = production_config(example, gateway_id=gateway_id,
                                 data_dir=args.data_dir.absolute(), config_path=path)
    except (OSError, ValueError) as exc:
        return fail(f"{args.example}: {exc}")
    tmp = path.with_name(f".{path.name}.init")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    if load_or_report(tmp) is None:
        tmp.unlink()
        return EXIT_CONFIG
    tmp.rename(path)
    print(f"{path}: written (gateway {gateway_id}, no devices, data in {args.data_dir.absolute()})")
    return 0
