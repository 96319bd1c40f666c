"""Every runtime dependency in pyproject.toml is imported by the code, or listed here with the reason."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "gateway", ROOT / "drivers", ROOT / "firmware-sim" / "firmware_sim"]

# Declared but not imported, on purpose:
NOT_IMPORTED = {
    "tzdata": "a data package: zoneinfo reads it where /usr/share/zoneinfo is missing",
}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_canonical(re.split(r"[<>=!~ ;\[]", spec, maxsplit=1)[0]) for spec in project["dependencies"]}


def _imported_top_levels() -> set[str]:
    names: set[str] = set()
    for folder in SOURCES:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module.split(".")[0])
    return names


def test_every_runtime_dependency_is_imported_or_listed_with_a_reason() -> None:
    dists_of = packages_distributions()
    used = {_canonical(dist) for name in _imported_top_levels() for dist in dists_of.get(name, [])}
    declared = _declared()
    unused = declared - used - NOT_IMPORTED.keys()
    assert not unused, f"declared in pyproject.toml but imported nowhere: {sorted(unused)}"
    stale = {name for name in NOT_IMPORTED if name in used or name not in declared}
    assert not stale, f"listed as not imported, but imported (or no longer declared): {sorted(stale)}"


def test_the_daemon_never_imports_tomlkit() -> None:
    """tomlkit is for `device add` only: building the CLI and the whole gateway leaves it unloaded."""
    code = (
        "import sys\n"
        "from gateway.cli import build_parser\n"
        "import gateway.app, gateway.web.server\n"
        "build_parser().parse_args(['run'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tomlkit'))\n"
    )
    assert _output_of(code) == "[]"


def test_a_running_daemon_loads_jinja2_only_when_a_panel_page_is_asked_for(tmp_path: Path) -> None:
    """The panel's pages and Jinja2 (~1.5 MB) load at the first page request, not at start."""
    from tests.fixtures.gateway import free_port, write_config

    api_port = free_port()
    config = write_config(tmp_path, devices=["AP-001"], port=free_port(), api=f"port = {api_port}")
    code = (
        "import asyncio, sys, urllib.request\n"
        "from tests.fixtures.gateway import running\n"
        "def loaded(): return sorted({m.split('.')[0] for m in sys.modules} & {'jinja2', 'markupsafe'})\n"
        "async def main():\n"
        f"    async with running({str(config)!r}) as gw:\n"
        "        print('at start', loaded())\n"
        f"        url = 'http://127.0.0.1:{api_port}/login'\n"
        "        page = await asyncio.to_thread(urllib.request.urlopen, url, timeout=10)\n"
        "        print('after a page', page.status, loaded())\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith(("at start", "after a page"))]
    assert lines == ["at start []", "after a page 200 ['jinja2', 'markupsafe']"]


def test_the_command_line_imports_only_the_command_it_runs() -> None:
    """`edge-gateway run` builds its parser without importing the other commands' modules (the daemon's memory)."""
    code = (
        "import sys\n"
        "from gateway.cli import COMMANDS, build_parser\n"
        "args = build_parser(['run', '--config', 'x.toml']).parse_args(['run', '--config', 'x.toml'])\n"
        "assert args.handler.__module__ == 'gateway.cli.run', args\n"
        "print(sorted(m for m in COMMANDS.values() if f'gateway.cli.{m}' in sys.modules))\n"
    )
    assert _output_of(code) == "['run']"


def _output_of(code: str) -> str:
    """What `code` prints in a fresh interpreter (nothing imported before it)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_a_gateway_on_the_mosquitto_backend_never_imports_amqtt(tmp_path: Path) -> None:
    """The embedded broker's library (and its own dependencies) stay out of a daemon that runs Mosquitto."""
    from tests.fixtures.gateway import free_port, write_config

    config = write_config(tmp_path, devices=["AP-001"], port=free_port(), backend="mosquitto")
    code = (
        "import sys\n"
        "from gateway.cli import build_parser\n"
        "from gateway.app import Gateway\n"
        "from gateway.settings import load_settings\n"
        "import gateway.web.server, gateway.uplink.client\n"
        "build_parser(['run']).parse_args(['run'])\n"
        f"gateway = Gateway(load_settings({str(config)!r}))\n"
        "assert type(gateway.broker).__module__ == 'gateway.broker.mosquitto.backend', type(gateway.broker)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'amqtt', 'transitions', 'websockets', 'passlib'})"
        " + sorted(m for m in sys.modules if m.startswith('gateway.broker.amqtt')))\n"
    )
    assert _output_of(code) == "[]"
