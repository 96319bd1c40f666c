"""Logging set-up: one format per run, JSON lines when not on a terminal (journald, files), console otherwise.

structlog's own events and the standard library's records (amqtt, aiohttp, asyncio, aiosqlite) end in the
same renderer: stdlib records go through structlog's ProcessorFormatter with the same time stamp, level and
exception processors. In JSON mode an exception is one field (`exception`) of its event's one line, and an
exception nothing caught (sys.excepthook, threading.excepthook) is logged the same way, not printed as text.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _stdlib_logger_name(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """`logger`: the name of the stdlib logger a foreign record came from (amqtt.broker, aiohttp.server...)."""
    record = event.get("_record")
    if record is not None:
        event["logger"] = record.name
    return event


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if as_json:
        # The traceback as one string field: JSONRenderer escapes its newlines, so the event stays one line.
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)  # renders exc_info itself, as plain text
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_stdlib_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    ))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    # Libraries (amqtt, aiosqlite) log through the standard library; their info lines are noise.
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    # amqtt logs every refused login and ACL check at warning/info: we log those ourselves, once.
    logging.getLogger("amqtt").setLevel(logging.DEBUG if level == "debug" else logging.ERROR)
    if as_json:
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread
    else:
        sys.excepthook = sys.__excepthook__
        threading.excepthook = threading.__excepthook__


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    structlog.get_logger("gateway").critical("uncaught_exception", exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    structlog.get_logger("gateway").critical(
        "uncaught_exception", thread=getattr(args.thread, "name", None),
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
