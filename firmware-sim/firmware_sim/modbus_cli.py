"""`edge-gateway-sim modbus`: simulated Modbus RTU slaves on a pty and/or TCP (RTU framing).

    edge-gateway-sim modbus --pty /tmp/edge-gateway-rs485 --tcp 127.0.0.1:5020 \\
        --slave 1=s8 --slave 2=qsa2700 --slave 3=sdm630 --slave 4=purifier --fault 2=slow:200

Default slaves: 1 Senseair S8, 2 Siemens QSA2700, 3 Eastron SDM630, 4 an RS-485 purifier (fan speed in
holding register 0, writable). Faults: `UNIT=silent`, `UNIT=slow:MS`, `UNIT=garbled`, `UNIT=exception:CODE`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from firmware_sim.modbus_server import PtyPort, SimBus
from firmware_sim.modbus_slaves import MODELS, Fault, SimSlave, load_slave

log = logging.getLogger("firmware_sim.modbus")

DEFAULT_SLAVES = ("1=s8", "2=qsa2700", "3=sdm630", "4=purifier")
DEFAULT_MAPS = Path(__file__).resolve().parent.parent.parent / "config" / "registers"


def parse_fault(text: str) -> tuple[int, Fault]:
    unit, _, spec = text.partition("=")
    mode, _, arg = spec.partition(":")
    if mode == "slow":
        return int(unit), Fault("slow", slow_ms=float(arg or 1000))
    if mode == "exception":
        return int(unit), Fault("exception", exception_code=int(arg or 4))
    if mode in ("silent", "garbled", "none"):
        return int(unit), Fault(mode)
    raise argparse.ArgumentTypeError(f"unknown fault {spec!r} (silent, slow:MS, garbled, exception:CODE)")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("modbus", help="Modbus RTU slaves (S8, QSA2700, SDM630, RS-485 purifier) on a pty or TCP")
    p.add_argument("--pty", type=Path, default=None, help="link the simulated serial port here (a path)")
    p.add_argument("--tcp", default=None, help="also serve RTU framing over TCP on HOST:PORT")
    p.add_argument("--slave", action="append", default=None,
                   help=f"UNIT=MODEL ({', '.join(MODELS)}) or UNIT=PATH of a map file; repeatable")
    p.add_argument("--fault", action="append", default=[], type=parse_fault, help="UNIT=silent|slow:MS|garbled|"
                   "exception:CODE; repeatable")
    p.add_argument("--maps", type=Path, default=DEFAULT_MAPS, help="folder of the register maps")
    p.add_argument("--baudrate", type=int, default=0, help="emulate a line of this speed (0: answer at once)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")


def build_slaves(specs: list[str], faults: list[tuple[int, Fault]], maps: Path) -> list[SimSlave]:
    slaves = []
    for spec in specs:
        number, _, model = spec.partition("=")
        slaves.append(load_slave(int(number), model, maps))
    by_unit = {s.unit: s for s in slaves}
    for unit, fault in faults:
        by_unit[unit].fault = fault
    return slaves


async def run_modbus(args: argparse.Namespace) -> int:
    if args.pty is None and args.tcp is None:
        log.error("give --pty PATH and/or --tcp HOST:PORT")
        return 2
    bus = SimBus(build_slaves(args.slave or list(DEFAULT_SLAVES), args.fault, args.maps), baudrate=args.baudrate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    pty = server = None
    if args.pty is not None:
        pty = PtyPort(bus, args.pty)
        pty.open()
        log.info("serial port at %s", args.pty)
    if args.tcp is not None:
        host, _, port = args.tcp.rpartition(":")
        server = await bus.serve_tcp(host or "127.0.0.1", int(port))
        log.info("RTU over TCP on %s", args.tcp)
    for slave in bus.slaves.values():
        log.info("slave %d: %s, %d points, fault %s", slave.unit, slave.model, len(slave.points), slave.fault.mode)
    try:
        await asyncio.wait_for(stop.wait(), args.duration)
    except TimeoutError:
        pass
    finally:
        if pty is not None:
            pty.close()
        if server is not None:
            server.close()
            await server.wait_closed()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    log.info("served %s", ", ".join(f"slave {s.unit}: {s.requests} requests" for s in bus.slaves.values()))
    return 0
