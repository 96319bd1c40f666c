"""A daemon that cannot start says why in one line and exits with status 3, instead of hanging.

(Under systemd a hang is no READY=1, a kill at the start timeout and a restart loop.)
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.core.errors import StartupError
from gateway.settings import load_settings
from tests.fixtures.gateway import free_port, write_config

EXIT_STARTUP = 3
# A bound, not a speed claim: a failed start takes well under a second here; a hang would take forever.
BOUND_S = 30.0


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def run_daemon(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=BOUND_S, env={**os.environ, "NOTIFY_SOCKET": ""},
    )


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_a_busy_broker_port_ends_the_daemon_with_one_clear_line(tmp_path: Path, busy_port: int) -> None:
    done = run_daemon(write_config(tmp_path, port=busy_port, api="enabled = false"))
    assert done.returncode == EXIT_STARTUP
    assert last_line(done.stderr).startswith("edge-gateway: cannot start: LAN broker: ")
    assert "address already in use" in last_line(done.stderr)


def test_listeners_bound_before_a_busy_one_are_closed_again(tmp_path: Path, busy_port: int) -> None:
    first = free_port()
    second = f'[[broker.listeners]]\nname = "second"\nhost = "127.0.0.1"\nport = {busy_port}'
    config = write_config(tmp_path, port=first, extra_listeners=second, api="enabled = false")
    done = run_daemon(config)
    assert done.returncode == EXIT_STARTUP
    assert "address already in use" in last_line(done.stderr)
    assert "Traceback" not in done.stderr  # amqtt's own traceback is replaced by the one line
    # In one process (a test, or a future in-process restart) the first listener must not stay bound.
    assert_start_fails_and_port_is_free(config, "LAN broker", first)


def test_a_busy_api_port_stops_the_broker_again_and_says_so(tmp_path: Path, busy_port: int) -> None:
    broker_port = free_port()
    config = write_config(tmp_path, port=broker_port, api=f'host = "127.0.0.1"\nport = {busy_port}')
    done = run_daemon(config)
    assert done.returncode == EXIT_STARTUP
    assert last_line(done.stderr).startswith(f"edge-gateway: cannot start: REST API on 127.0.0.1:{busy_port}: ")
    assert_start_fails_and_port_is_free(config, "REST API", broker_port)


def assert_start_fails_and_port_is_free(config: Path, phase: str, port: int) -> None:
    async def start() -> None:
        gateway = Gateway(load_settings(config))
        with pytest.raises(StartupError) as failed:
            await gateway.run(install_signals=False)
        assert failed.value.phase.startswith(phase)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0

    asyncio.run(start())


def test_an_unwritable_data_dir_names_the_database(tmp_path: Path) -> None:
    config = write_config(tmp_path, api="enabled = false")
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "gateway.db").mkdir()  # a directory where the database file should be: never openable, even as root
    done = run_daemon(config)
    assert done.returncode == EXIT_STARTUP
    assert last_line(done.stderr).startswith(f"edge-gateway: cannot start: database {data / 'gateway.db'}: ")


def test_a_database_that_opens_but_cannot_be_read_is_closed_again(tmp_path: Path) -> None:
    config = write_config(tmp_path, api="enabled = false")
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "gateway.db").write_bytes(b"this is not an SQLite database, but a file that opens" * 100)
    done = run_daemon(config)
    assert done.returncode == EXIT_STARTUP
    assert "file is not a database" in last_line(done.stderr)
