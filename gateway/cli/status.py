"""`edge-gateway status`: a gateway's health, devices online, cloud backlog and how far the cloud is in sync.

From the running gateway's REST API (`GET /health`) when it answers; otherwise from its database, as last
recorded (devices online, the newest reading, the outbox waiting for the cloud).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.cli.common import COMMAND_HELP, EXIT_CONFIG, add_config_option, fail, load_or_report
from gateway.cli.database import read_only, table_exists

EXIT_NOT_RUNNING = 3  # as LSB's `status` actions: the program is not running


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "status", help=COMMAND_HELP["status"],
        description="Show a gateway's health, devices online, cloud backlog and last sync: from its REST API, or "
                    "from its database when the API does not answer. Exit status 0: running; 3: not answering "
                    "(what the database says is shown); 2: config error; 1: neither could be read.",
    )
    add_config_option(parser)
    parser.add_argument("--url", default=None, help="the gateway's API, e.g. http://127.0.0.1:8080 (default: from "
                                                    "the config's [api])")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the API (default 2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_or_report(args.config)
    if loaded is None:
        return EXIT_CONFIG
    api = loaded.settings.api
    url = args.url or (f"http://{_loopback(api.host)}:{api.port}" if api.enabled else None)
    s = loaded.settings
    status: dict[str, Any] = {"gatewayId": s.gateway.id, "configuredDevices": len(s.device_kinds())}
    problem = "the REST API is disabled ([api] enabled = false)"
    if url is not None:
        try:
            status |= from_api(url.rstrip("/") + "/health", args.timeout)
        except OSError as exc:
            problem = f"not answering at {url} ({exc})"
    if "running" not in status:
        try:
            status |= from_database(loaded.db_path)
        except (OSError, sqlite3.Error) as exc:
            return fail(f"{problem}; database: {exc}")
        status["running"] = False
        status["apiProblem"] = problem
        if not s.uplink.enabled:
            status["cloud"] = None
    if args.json:
        print(json.dumps(status))
    else:
        print("\n".join(describe(status)))
    return 0 if status["running"] else EXIT_NOT_RUNNING


def _loopback(host: str) -> str:
    """Where to reach a listener bound to `host` from this machine."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def from_api(url: str, timeout: float) -> dict[str, Any]:
    """The gateway's /health in status form; OSError naming the cause when it does not answer with one."""
    # Imported here, not at the top: the daemon (which imports every command module) never needs them.
    import http.client
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            health = json.loads(response.read())
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise OSError(getattr(exc, "reason", None) or exc) from exc
    if not isinstance(health, dict):
        raise OSError(f"not a health answer: {str(health)[:80]}")
    uplink = health.get("uplink")
    return {
        "source": url, "running": health.get("status") == "ok", "state": health.get("status"),
        "version": health.get("version"), "uptimeSeconds": health.get("uptimeSeconds"),
        "devices": health.get("devices"), "devicesOnline": health.get("devicesOnline"),
        "readingsCommitted": health.get("readingsCommitted"), "storeQueue": health.get("storeQueue"),
        "cloud": None if uplink is None else {
            "connected": uplink.get("connected"), "backlog": uplink.get("backlog"),
            "oldestUnsentAge": uplink.get("oldestUnsentAge"), "lastError": uplink.get("lastError"),
        },
        "links": {name: link.get("state") for name, link in (health.get("links") or {}).items()
                  if isinstance(link, dict)},
    }


def from_database(db_path: Path) -> dict[str, Any]:
    with read_only(db_path) as conn:
        online, known = conn.execute("SELECT coalesce(sum(online), 0), count(*) FROM device_state").fetchone()
        last = conn.execute("SELECT device_id, ts, received_at FROM readings ORDER BY id DESC LIMIT 1").fetchone()
        cloud = None
        if table_exists(conn, "outbox"):
            backlog, oldest = conn.execute("SELECT count(*), min(created_at) FROM outbox").fetchone()
            cloud = {"backlog": backlog, "oldestUnsent": oldest}
    return {
        "source": str(db_path), "devicesOnline": int(online), "devicesKnown": int(known),
        "lastReading": None if last is None else {"deviceId": last[0], "ts": last[1], "receivedAt": last[2]},
        "cloud": cloud,
    }


def describe(s: dict[str, Any]) -> list[str]:
    if s["running"]:
        lines = [f"gateway {s['gatewayId']}: running, version {s['version']}, up {_duration(s['uptimeSeconds'])} "
                 f"(from {s['source']})",
                 f"devices: {s['devices']} configured, {s['devicesOnline']} online",
                 f"store: {_count(s['readingsCommitted'])} readings committed since start, "
                 f"{_count(s['storeQueue'])} waiting"]
        failing = sorted(name for name, state in s["links"].items() if state == "failing")
        if failing:
            lines.append(f"failing (restarting with back-off): {', '.join(failing)}")
    else:
        lines = [f"gateway {s['gatewayId']}: {s['apiProblem']}; as last recorded in {s['source']}:",
                 f"devices: {s['configuredDevices']} configured, {s['devicesOnline']} online when last recorded"]
        last = s["lastReading"]
        lines.append("last reading: none" if last is None else
                     f"last reading: {_when(last['receivedAt'])} from {last['deviceId']}")
    lines.append(f"cloud: {_cloud(s['cloud'])}")
    return lines


def _cloud(cloud: dict[str, Any] | None) -> str:
    if cloud is None:
        return "off ([uplink] enabled = false)"
    link = "" if "connected" not in cloud else ("connected; " if cloud["connected"] else "not connected; ")
    if not cloud["backlog"]:
        return f"{link}nothing waiting: in sync"
    if cloud.get("oldestUnsentAge") is not None:
        since = time.time() - float(cloud["oldestUnsentAge"])
    elif cloud.get("oldestUnsent") is not None:
        since = float(cloud["oldestUnsent"])
    else:
        return f"{link}{cloud['backlog']} waiting"
    return f"{link}{cloud['backlog']} waiting; in sync up to {_when(since)}"


def _count(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"
