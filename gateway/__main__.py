"""Command line: `edge-gateway run | check-config | hash-password | demo`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# structlog renders exceptions with rich when it can import it (rich comes with amqtt's command-line
# dependencies): 3-4 MB of RSS in a daemon with a 60 MB budget, for colours nobody sees in a journal.
# The daemon logs plain tracebacks instead. (Set before anything imports structlog.)
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

from gateway import __version__  # noqa: E402
from gateway.core.errors import ConfigError, IncompatibleLibraryError, StartupError  # noqa: E402
from gateway.settings import LoadedSettings, load_settings  # noqa: E402

if TYPE_CHECKING:
    from drivers.ble.link import BleBackends

EXIT_CONFIG = 2
EXIT_STARTUP = 3  # a port in use, an unwritable data dir, a database that cannot be opened, a wrong library
DEFAULT_CONFIG = "/etc/edge-gateway/gateway.toml"
EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gateway.example.toml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-gateway", description="Local hub for air purifiers and sensors.")
    parser.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")

    check = sub.add_parser("check-config", help="validate a config file; exit 2 listing every error")
    check.add_argument("path")

    hashp = sub.add_parser("hash-password", help="print an argon2 hash of a password (a device's, or a panel user's)")
    hashp.add_argument("--password", help="the password (default: prompt, or read one line from stdin)")

    demo = sub.add_parser("demo", help="run the gateway with simulated purifiers (no cloud needed)")
    demo.add_argument("--config", default=str(EXAMPLE_CONFIG))
    demo.add_argument("--count", type=int, default=3, help="simulated purifiers (ids AP-01...)")
    demo.add_argument("--interval", type=float, default=5.0, help="seconds between readings per purifier")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")

    args = parser.parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "hash-password":
        return _hash_password(args.password)
    if args.command == "run":
        return _run(args.config)
    return _demo(args.config, args.count, args.interval, args.duration)


def _load_or_report(path: str) -> LoadedSettings | None:
    try:
        return load_settings(path)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return None


def _check_config(path: str) -> int:
    loaded = _load_or_report(path)
    if loaded is None:
        return EXIT_CONFIG
    s = loaded.settings
    print(f"{path}: OK (gateway {s.gateway.id}, {len(s.device_kinds())} devices, data in {loaded.data_dir})")
    return 0


def _hash_password(password: str | None) -> int:
    from gateway.core.passwords import hash_password

    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                print("passwords differ", file=sys.stderr)
                return 1
        else:
            password = sys.stdin.readline().rstrip("\n")
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _run(config: str) -> int:
    loaded = _load_or_report(config)
    if loaded is None:
        return EXIT_CONFIG
    from gateway.app import run_gateway
    from gateway.logs import configure_logging
    from gateway.malloc_tuning import limit_arenas

    limit_arenas(1)  # before any thread exists: see gateway/malloc_tuning.py
    configure_logging(loaded.settings.logging.level, loaded.settings.logging.format)
    try:
        asyncio.run(run_gateway(loaded))
    except (StartupError, IncompatibleLibraryError) as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    return 0


def _demo(config: str, count: int, interval: float, duration: float | None) -> int:
    loaded = _load_or_report(config)
    if loaded is None:
        return EXIT_CONFIG
    from gateway.logs import configure_logging

    configure_logging(loaded.settings.logging.level, "console")
    try:
        return asyncio.run(_demo_async(loaded, count, interval, duration))
    except (StartupError, IncompatibleLibraryError) as exc:
        print(f"edge-gateway: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def _with_demo_login(loaded: LoadedSettings) -> tuple[LoadedSettings, str | None]:
    """The demo's panel login: an admin `demo` with a fresh password (unless the config has users), and the
    REST API still open to this machine (the Quick start's curl lines)."""
    s = loaded.settings
    if s.users:
        return loaded, None
    import secrets

    from gateway.core.passwords import hash_password
    from gateway.settings_users import UserSettings

    password = secrets.token_urlsafe(9)
    settings = s.model_copy(update={
        "users": [UserSettings(name="demo", role="admin", password_hash=hash_password(password))],
        "panel": s.panel.model_copy(update={"loopback_anonymous_api": True}),
    })
    return LoadedSettings(settings=settings, path=loaded.path), password


async def _demo_async(loaded: LoadedSettings, count: int, interval: float, duration: float | None) -> int:
    from gateway.app import Gateway

    loaded, demo_password = _with_demo_login(loaded)
    gateway = Gateway(loaded, ble_backends=_simulated_ble(loaded, interval))
    run_task = asyncio.create_task(gateway.run(), name="gateway")
    ready = asyncio.create_task(gateway.ready.wait())
    await asyncio.wait({run_task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if run_task.done():
        ready.cancel()
        await run_task  # raises the start-up error
        return EXIT_STARTUP
    port = gateway.broker.bound_ports()[0]
    sim = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_sim", "purifiers", "--count", str(count), "--interval", str(interval),
        "--host", "127.0.0.1", "--port", str(port),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    print(f"demo: gateway on port {port}, {count} simulated purifiers every {interval:g} s; "
          f"readings go to {loaded.db_path}. Ctrl-C stops.", flush=True)
    if loaded.settings.ble.devices:
        ble_ids = ", ".join(d.id for d in loaded.settings.ble.devices)
        print(f"demo: simulated BLE sensors {ble_ids} on a simulated radio (bleak backend)", flush=True)
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
            print(f"demo: {committed} readings committed, {online} devices online", flush=True)
            if duration is not None and loop.time() - started >= duration:
                break  # the simulator stops first, so its purifiers say "offline" to a running gateway
    finally:
        if sim.returncode is None:
            sim.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(sim.wait(), 5)
            except TimeoutError:
                sim.kill()
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


if __name__ == "__main__":
    sys.exit(main())
