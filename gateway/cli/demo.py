"""`edge-gateway demo`: the gateway with simulated purifiers, on the demo's own config (no cloud needed)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.common import (
    COMMAND_HELP,
    EXAMPLE_CONFIG,
    EXIT_CONFIG,
    EXIT_STARTUP,
    add_config_option,
    load_or_report,
)

if TYPE_CHECKING:
    from drivers.ble.link import BleBackends
    from gateway.settings import LoadedSettings


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 999:
        raise argparse.ArgumentTypeError(f"must be 0..999, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 0..65535 (0: any free one), got {text}")
    return value


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo", help=COMMAND_HELP["demo"],
        description="Run the gateway with simulated purifiers. The demo writes its config to DATA_DIR/demo.toml: "
                    "the base config with N purifiers AP-01.. whose passwords are demo-{id}, as the simulator "
                    "(edge-gateway-sim purifiers) derives them.",
    )
    add_config_option(parser, default=str(EXAMPLE_CONFIG))
    parser.add_argument("--devices", "--count", dest="devices", type=_count, default=3,
                        help="demo purifiers configured, AP-01.. (default 3)")
    parser.add_argument("--simulate", type=_count, default=None,
                        help="how many of them the demo simulates itself (default: all; the rest can come from "
                             "edge-gateway-sim purifiers --start K+1)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between readings per purifier")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--mqtt-port", type=_port, default=None, help="the LAN broker's port (default: the config's)")
    parser.add_argument("--api-port", type=_port, default=None, help="the REST API's port (default: the config's)")
    parser.add_argument("--reset", action="store_true",
                        help="forget the previous demo's state first (its database: readings, schedules, pre-cleans)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    base = load_or_report(args.config)
    if base is None:
        return EXIT_CONFIG
    simulate = args.devices if args.simulate is None else args.simulate
    if simulate > args.devices:
        print(f"edge-gateway: --simulate {simulate} is more than --devices {args.devices}", file=sys.stderr)
        return EXIT_CONFIG
    from gateway.cli.demo_config import demo_settings, write_demo_config

    path = write_demo_config(
        demo_settings(base, devices=args.devices, mqtt_port=args.mqtt_port, api_port=args.api_port), base.path,
    )
    loaded = load_or_report(path)
    if loaded is None:
        return EXIT_CONFIG
    if args.reset:
        _forget_state(loaded.db_path)
    from gateway.core.errors import IncompatibleLibraryError, StartupError
    from gateway.logs import configure_logging

    configure_logging(loaded.settings.logging.level, "console")
    print(f"demo: config {path}: {args.devices} purifiers AP-01.. (passwords demo-{{id}})", flush=True)
    try:
        return asyncio.run(_demo(loaded, simulate, args.interval, args.duration))
    except (StartupError, IncompatibleLibraryError) as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def _forget_state(db_path: Path) -> None:
    removed = []
    for suffix in ("", "-wal", "-shm", "-journal"):
        part = db_path.with_name(db_path.name + suffix)
        if part.exists():
            part.unlink()
            removed.append(part.name)
    print(f"demo: reset: {'removed ' + ', '.join(removed) if removed else 'no previous state'} in {db_path.parent}",
          flush=True)


_SIM_LEVELS = {"DEBUG": "debug", "INFO": "info", "WARNING": "warning", "ERROR": "error", "CRITICAL": "critical"}


async def relay_simulator_log(stream: asyncio.StreamReader) -> None:
    """The simulator's log lines (`DATE TIME LEVEL NAME: MESSAGE`) as the demo's own events: one format."""
    import structlog

    log = structlog.get_logger("demo")
    while line := await stream.readline():
        parts = line.decode(errors="replace").rstrip().split(" ", 4)
        if len(parts) == 5 and parts[2] in _SIM_LEVELS and parts[3].endswith(":"):
            getattr(log, _SIM_LEVELS[parts[2]])(parts[4], simulator=parts[3][:-1])
        else:
            log.info(" ".join(parts), simulator="output")


def _with_demo_login(loaded: LoadedSettings) -> tuple[LoadedSettings, str | None]:
    """The demo's panel login: an admin `demo` with a fresh password (unless the config has users), and the
    REST API still open to this machine (the Quick start's curl lines)."""
    s = loaded.settings
    if s.users:
        return loaded, None
    import secrets

    from gateway.core.passwords import hash_password
    from gateway.settings import LoadedSettings
    from gateway.settings_users import UserSettings

    password = secrets.token_urlsafe(9)
    settings = s.model_copy(update={
        "users": [UserSettings(name="demo", role="admin", password_hash=hash_password(password))],
        "panel": s.panel.model_copy(update={"loopback_anonymous_api": True}),
    })
    return LoadedSettings(settings=settings, path=loaded.path), password


async def _demo(loaded: LoadedSettings, simulate: int, interval: float, duration: float | None) -> int:
    from gateway.app import Gateway

    loaded, demo_password = _with_demo_login(loaded)
    gateway = Gateway(loaded, ble_backends=_simulated_ble(loaded, interval), demo=True)
    run_task = asyncio.create_task(gateway.run(), name="gateway")
    ready = asyncio.create_task(gateway.ready.wait())
    await asyncio.wait({run_task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if run_task.done():
        ready.cancel()
        await run_task  # raises the start-up error
        return EXIT_STARTUP
    port = gateway.broker.bound_ports()[0]
    sim = relay = None
    if simulate:
        from gateway.cli.demo_config import DEMO_ID_PREFIX
        from gateway.demo_credentials import DEMO_PASSWORD_TEMPLATE

        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firmware_sim", "purifiers", "--count", str(simulate), "--interval", str(interval),
            "--id-prefix", DEMO_ID_PREFIX, "--start", "1", "--password-template", DEMO_PASSWORD_TEMPLATE,
            "--host", "127.0.0.1", "--port", str(port),
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=asyncio.subprocess.PIPE,
        )
        assert sim.stderr is not None
        relay = asyncio.create_task(relay_simulator_log(sim.stderr), name="simulator-log")
    configured = len(loaded.settings.devices)
    print(f"demo: gateway on port {port}, {simulate} simulated purifiers every {interval:g} s; "
          f"readings go to {loaded.db_path}. Ctrl-C stops.", flush=True)
    if loaded.settings.ble.devices:
        ble_ids = ", ".join(d.id for d in loaded.settings.ble.devices)
        print(f"demo: simulated BLE sensors {ble_ids} on a simulated radio (bleak backend)", flush=True)
    purifiers = [d.id for d in loaded.settings.devices]
    if simulate < configured:
        waiting = purifiers[simulate] if simulate + 1 == configured else f"{purifiers[simulate]}..{purifiers[-1]}"
        print(f"demo: {waiting} wait for a simulator: edge-gateway-sim purifiers "
              f"--start {simulate + 1} --count {configured - simulate} --port {port}", flush=True)
    if gateway.api is not None:
        api = loaded.settings.api
        scheme = "https" if loaded.settings.panel.tls else "http"
        print(f"demo: REST API on {scheme}://{api.host}:{gateway.api.port} (try /api/device/list/all, "
              f"/api/openapi.json)", flush=True)
        login = (f"log in as demo / {demo_password}" if demo_password is not None
                 else "log in as one of the config's [[users]]")
        print(f"demo: panel on {scheme}://{api.host}:{gateway.api.port}/ ({login})", flush=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        while not run_task.done():
            await asyncio.wait({run_task}, timeout=interval)
            online = gateway.registry.online_count()
            committed = int(gateway.metrics.value("gateway_readings_committed_total"))
            on = sum(1 for device_id in purifiers if (st := gateway.registry.get(device_id)) and st.online)
            print(f"demo: {committed} readings committed, {online} devices online ({on} of {configured} purifiers)",
                  flush=True)
            if duration is not None and loop.time() - started >= duration:
                break  # the simulator stops first, so its purifiers say "offline" to a running gateway
    finally:
        if sim is not None and sim.returncode is None:
            sim.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(sim.wait(), 5)
            except TimeoutError:
                sim.kill()
        if relay is not None:
            await relay
        gateway.stop()
        await run_task
    return 0


def _simulated_ble(loaded: LoadedSettings, interval: float) -> BleBackends | None:
    """The demo's BLE radio: a simulated sensor for each configured BLE device (its format and bindkey) and a
    GATT peripheral for each connectable one, as bleak backends (firmware_sim, bleak's backend= argument)."""
    devices = loaded.settings.ble.devices
    if not devices:
        return None
    from firmware_sim.ble.peripheral import SimulatedPeripheral
    from firmware_sim.ble.radio import SimulatedRadio
    from firmware_sim.ble.sensors import SimulatedBleSensor

    from drivers.ble.link import BleBackends

    radio = SimulatedRadio(
        [SimulatedBleSensor(d.mac, d.format, bindkey=bytes.fromhex(d.bindkey) if d.bindkey else None, seed=n)
         for n, d in enumerate(devices) if d.format is not None],
        [SimulatedPeripheral(d.mac, seed=n) for n, d in enumerate(devices) if d.gatt],
        advert_interval=interval,
    )
    return BleBackends(radio.scanner_backend, radio.client_backend)
