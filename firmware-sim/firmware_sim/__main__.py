"""`edge-gateway-sim`: run simulated devices against an MQTT broker, or Modbus slaves on a serial line.

    edge-gateway-sim purifiers --count 3 --interval 120 --host 127.0.0.1 --port 1883
    edge-gateway-sim modbus --pty /tmp/edge-gateway-rs485     (see firmware_sim/modbus_cli.py)
    edge-gateway-sim hub --hub-id HUB-1 --beacons 2000 --per-part 30 --out-of-order --duplicates 5

Each purifier logs in as its id (AP-01, AP-02, ...) with the password from --password-template.
SIGINT/SIGTERM (or --duration) stop every purifier cleanly: each publishes "offline" first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from firmware_sim import hub, modbus_cli
from firmware_sim.purifier import SimulatedPurifier

log = logging.getLogger("firmware_sim")

_STOP_TIMEOUT = 15.0


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-gateway-sim", description="Simulated edge-gateway devices.")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("purifiers", help="air purifiers speaking the MQTT device contract")
    p.add_argument("--count", type=_positive_int, default=3, help="number of purifiers (default 3)")
    p.add_argument("--interval", type=_positive_float, default=120.0, help="seconds between readings (default 120)")
    p.add_argument("--host", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default 1883)")
    p.add_argument("--id-prefix", default="AP-", help='device id prefix (default "AP-")')
    p.add_argument("--start", type=int, default=1, help="number of the first device (default 1: AP-01)")
    p.add_argument(
        "--password-template",
        default="demo-{id}",
        help='each password, formatted with the device id (default "demo-{id}")',
    )
    p.add_argument("--keepalive", type=_positive_int, default=30, help="MQTT keepalive seconds (default 30)")
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1, help="QoS of readings (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed (device n gets seed + n)")
    p.add_argument("--duration", type=_positive_float, default=None, help="stop after this many seconds")
    p.add_argument("--tls-ca", default=None, help="CA file: connect with TLS and verify the broker")
    p.add_argument(
        "--summary-interval", type=_positive_float, default=60.0, help="seconds between summary log lines (default 60)"
    )
    modbus_cli.add_parser(sub)
    hub.add_parser(sub)
    return parser


def device_ids(prefix: str, start: int, count: int) -> list[str]:
    return [f"{prefix}{n:02d}" for n in range(start, start + count)]


def _summary(sims: Sequence[SimulatedPurifier]) -> str:
    return (
        f"summary: {sum(s.connected for s in sims)}/{len(sims)} connected, "
        f"{sum(s.published for s in sims)} readings, {sum(s.acked for s in sims)} acks, "
        f"{sum(s.reconnects for s in sims)} reconnects, {sum(s.connect_failures for s in sims)} failed connects"
    )


async def _summaries(sims: Sequence[SimulatedPurifier], every: float) -> None:
    while True:
        await asyncio.sleep(every)
        log.info(_summary(sims))


async def run_purifiers(args: argparse.Namespace) -> int:
    ids = device_ids(args.id_prefix, args.start, args.count)
    sims = [
        SimulatedPurifier(
            device_id=device_id,
            password=args.password_template.format(id=device_id),
            host=args.host,
            port=args.port,
            interval=args.interval,
            keepalive=args.keepalive,
            qos=args.qos,
            tls_ca=args.tls_ca,
            seed=None if args.seed is None else args.seed + n,
        )
        for n, device_id in enumerate(ids)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "starting %d purifier(s) %s..%s against %s:%d, a reading every %g s",
        len(sims),
        ids[0],
        ids[-1],
        args.host,
        args.port,
        args.interval,
    )
    tasks = [asyncio.create_task(sim.run(), name=f"purifier-{sim.device_id}") for sim in sims]
    summary = asyncio.create_task(_summaries(sims, args.summary_interval), name="summary")
    failed = False
    try:
        stop_wait = asyncio.create_task(stop.wait(), name="stop-signal")
        done, _ = await asyncio.wait([stop_wait, *tasks], timeout=args.duration, return_when=asyncio.FIRST_COMPLETED)
        stop_wait.cancel()
        for task in done:
            if task is not stop_wait and task.exception() is not None:
                log.error("%s crashed", task.get_name(), exc_info=task.exception())
                failed = True
        log.info("stopping")
        for sim in sims:
            sim.stop()
        _, pending = await asyncio.wait(tasks, timeout=_STOP_TIMEOUT)
        for task in pending:
            log.warning("%s did not stop in %g s, cancelling", task.get_name(), _STOP_TIMEOUT)
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                if task not in done:
                    log.error("%s failed while stopping", task.get_name(), exc_info=result)
                failed = True
    finally:
        summary.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await summary
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    log.info(_summary(sims))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "purifiers":
        return asyncio.run(run_purifiers(args))
    if args.command == "modbus":
        return asyncio.run(modbus_cli.run_modbus(args))
    if args.command == "hub":
        return asyncio.run(hub.run_hub(args))
    raise AssertionError(f"unhandled command {args.command!r}")


if __name__ == "__main__":
    raise SystemExit(main())
