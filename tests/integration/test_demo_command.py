"""`edge-gateway demo` with its flags: ports chosen by flag, the simulator's README line beside the demo,
and --reset forgetting the previous demo's state. Real processes, free ports (not the Quick start's)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.settings import load_settings
from tests.fixtures.gateway import free_port


@contextlib.asynccontextmanager
async def demo(cwd: Path, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """A demo process; its output lines are collected in the list as they come."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "demo", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []

    async def collect() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            lines.append(line.decode())

    reader = asyncio.create_task(collect())
    try:
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            await proc.wait()
            await reader


async def until_line(lines: list[str], text: str, timeout: float = 30.0) -> str:
    async with asyncio.timeout(timeout):
        while True:
            for line in lines:
                if text in line:
                    return line
            await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_demo_ports_by_flag_and_the_simulator_beside_it(tmp_path: Path) -> None:
    mqtt, api = free_port(), free_port()
    async with demo(tmp_path, "--devices", "5", "--simulate", "2", "--interval", "0.5",
                    "--mqtt-port", str(mqtt), "--api-port", str(api)) as (_, lines):
        await until_line(lines, f"demo: gateway on port {mqtt}, 2 simulated purifiers")
        await until_line(lines, f"REST API on http://127.0.0.1:{api}")
        hint = await until_line(lines, "wait for a simulator: ")
        assert f"edge-gateway-sim purifiers --start 3 --count 3 --port {mqtt}" in hint
        await until_line(lines, "(2 of 5 purifiers)")
        # the README's simulator line for the rest of the demo's purifiers, from another terminal
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firmware_sim", "purifiers", "--start", "3", "--count", "3", "--interval", "0.5",
            "--port", str(mqtt), "--duration", "30",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await until_line(lines, "(5 of 5 purifiers)")
        finally:
            sim.send_signal(signal.SIGTERM)
            await asyncio.wait_for(sim.wait(), 20)
    output = "".join(lines)
    assert "refused" not in output and "takeover" not in output
    settings = load_settings(tmp_path / "var" / "demo.toml").settings
    assert [d.id for d in settings.devices] == ["AP-01", "AP-02", "AP-03", "AP-04", "AP-05"]
    assert (settings.broker.listeners[0].port, settings.api.port) == (mqtt, api)


def _readings(db: Path) -> list[float]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT received_at FROM readings ORDER BY id")]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_demo_reset_forgets_the_previous_demo(tmp_path: Path) -> None:
    ports = ("--mqtt-port", "0", "--api-port", "0", "--interval", "0.5", "--devices", "1")
    db = tmp_path / "var" / "gateway.db"
    async with demo(tmp_path, *ports) as (_, lines):
        await until_line(lines, "readings committed")
    first = _readings(db)
    assert first
    async with demo(tmp_path, *ports) as (_, lines):  # without --reset: the same database goes on
        await until_line(lines, "devices online")
    assert _readings(db)[: len(first)] == first
    async with demo(tmp_path, *ports, "--reset") as (_, lines):
        await until_line(lines, "demo: reset: removed gateway.db")
        await until_line(lines, "devices online")
    after = _readings(db)
    assert not set(after) & set(first) and min(after, default=float("inf")) > max(first)
