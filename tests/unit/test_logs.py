"""One log format per run: stdlib records (amqtt, aiohttp) and structlog events alike; in JSON mode an
exception is one field of its event's one line. Each case runs in a child process (logging is global)."""

from __future__ import annotations

import json
import subprocess
import sys

PROGRAM = """
import logging, sys, threading
sys.modules["rich"] = None
import structlog
from gateway.logs import configure_logging
configure_logging("info", sys.argv[1])
logging.getLogger("aiohttp.server").warning("listener %s busy", "api")
try:
    raise ValueError("bad\\nvalue")
except ValueError:
    logging.getLogger("amqtt.broker").error("broker failed", exc_info=True)
    structlog.get_logger().error("store.failed", attempt=2, exc_info=True)
logging.getLogger("amqtt.broker").info("amqtt's info lines are dropped")
thread = threading.Thread(target=lambda: 1 / 0, name="worker")
thread.start(); thread.join()
raise RuntimeError("nobody caught this")
"""


def _run(fmt: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROGRAM, fmt], capture_output=True, text=True, timeout=60)


def test_json_mode_writes_one_json_object_per_line_with_exceptions_as_one_field() -> None:
    done = _run("json")
    assert done.returncode == 1
    events = [json.loads(line) for line in done.stderr.splitlines()]  # every line is one JSON object
    assert [e["event"] for e in events] == [
        "listener api busy", "broker failed", "store.failed", "uncaught_exception", "uncaught_exception"]
    warning, stdlib_error, structlog_error, in_thread, uncaught = events
    assert warning["logger"] == "aiohttp.server" and warning["level"] == "warning" and "timestamp" in warning
    assert stdlib_error["logger"] == "amqtt.broker"
    for event in (stdlib_error, structlog_error):
        assert event["exception"].startswith("Traceback (most recent call last):")
        assert event["exception"].rstrip().endswith("ValueError: bad\nvalue")
    assert structlog_error["attempt"] == 2
    assert in_thread["thread"] == "worker" and "ZeroDivisionError" in in_thread["exception"]
    assert "RuntimeError: nobody caught this" in uncaught["exception"]


def test_console_mode_renders_stdlib_records_like_structlog_events() -> None:
    done = _run("console")
    lines = done.stderr.splitlines()
    warning = next(line for line in lines if "listener api busy" in line)
    failed = next(line for line in lines if "store.failed" in line)
    # the same layout: ISO time stamp, then the level in brackets
    assert warning.split(" ", 1)[0].endswith("Z") and "[warning  ]" in warning
    assert failed.split(" ", 1)[0].endswith("Z") and "[error    ]" in failed
    assert "[amqtt.broker]" in next(line for line in lines if "broker failed" in line)
    assert not any(" WARNING aiohttp" in line for line in lines)  # no stdlib logging.basicConfig format
