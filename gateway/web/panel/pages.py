"""The panel's pages (overview, device, gateway), its live stream and its chart data.

Pages read through the same facade and read queries as the REST API; every change a page makes goes
through the REST API itself (its scripts call it with the session and the CSRF token), so the panel holds
no control logic of its own.
"""

from __future__ import annotations

from typing import Any

from gateway.control.command_model import CommandStatus
from gateway.store import read_queries
from gateway.web.aiohttp_web import web
from gateway.web.api import CONTEXT, schedule_view
from gateway.web.auth import Session
from gateway.web.panel.context import PANEL, Panel
from gateway.web.panel.live import serve_stream
from gateway.web.panel.login import page, render_page
from gateway.web.panel.rows import ROW_METRICS, device_row, device_rows
from gateway.web.requests import ApiError
from gateway.web.views import device_control_json, preclean_json

QUARANTINE_ROWS = 100
HISTORY_ROWS = 50
# Chart spans: (seconds, bucket seconds): a few hundred points each, whatever the reading rate.
SPANS = {"hour": (3600.0, 10.0), "day": (86_400.0, 300.0), "week": (7 * 86_400.0, 1800.0)}
CHART_METRICS = ROW_METRICS


@page
async def overview(request: web.Request, panel: Panel, session: Session) -> web.StreamResponse:
    rows = device_rows(panel.sources)
    rooms = sorted({row["room"] for row in rows if row["room"]})
    room = request.query.get("room", "")
    return render_page(request, "overview.html", session, {
        "rows": rows, "rooms": rooms, "room": room if room in rooms else "", "metrics": ROW_METRICS,
        "online": sum(1 for row in rows if row["online"]),
    })


@page
async def device(request: web.Request, panel: Panel, session: Session) -> web.StreamResponse:
    device_id = request.match_info["deviceId"]
    settings = panel.sources.settings().device(device_id)
    if settings is None:
        return render_page(request, "missing.html", session, {"device_id": device_id}, status=404)
    ctx = request.app[CONTEXT]
    controller = ctx.controller
    registry = panel.sources.registry
    history = await read_queries.command_log(ctx.reader(), device_id, limit=HISTORY_ROWS)
    data = {
        "device": device_id,
        "row": device_row(settings, registry.get(device_id), registry.desired(device_id)),
        "control": device_control_json(controller.device_control(device_id)),
        "preclean": preclean_json(controller.preclean_status(device_id)),
        "schedules": [schedule_view(controller, s)
                      for s in sorted(controller.schedules_for(device_id), key=lambda s: s.id)],
        "history": history,
        "now": panel.sources.clock.now(),
        "finished": [s.value for s in CommandStatus if s.finished],
    }
    return render_page(request, "device.html", session, {
        "device": settings, "row": data["row"], "data": data, "history": history,
        "commands": panel.sources.takes_commands(device_id),
        "spans": list(SPANS), "chart_metrics": CHART_METRICS,
    })


@page
async def gateway(request: web.Request, panel: Panel, session: Session) -> web.StreamResponse:
    sources = panel.sources
    health = sources.health()
    uplink = sources.uplink()
    details: dict[str, Any] = {}
    if session.role == "admin":
        db = sources.db_path
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        details = {
            "quarantine": await read_queries.latest_quarantine(request.app[CONTEXT].reader(), limit=QUARANTINE_ROWS),
            "clients": sources.clients_connected(),
            "db_path": str(db),
            "db_bytes": sum(f.stat().st_size for f in files if f.exists()),
            "sessions": len(panel.auth.sessions),
            "streams": panel.feed.open_streams,
            "links": health.get("links", {}),
        }
    return render_page(request, "gateway.html", session, {
        "health": health, "uplink": uplink, "now": sources.clock.now(), "details": details,
    })


async def events(request: web.Request) -> web.StreamResponse:
    panel = request.app[PANEL]
    session = panel.auth.session_of(request) if panel.auth.required else None
    if session is None:
        raise ApiError(401, "not logged in")
    sessions = panel.auth.sessions

    def still_allowed() -> bool:
        return sessions.alive(session.sid)

    return await serve_stream(request, panel.feed, keepalive_s=panel.keepalive_s, still_allowed=still_allowed)


async def series(request: web.Request) -> web.StreamResponse:
    """Chart data of one device: per bucket the average of each charted metric over the chosen span."""
    panel = request.app[PANEL]
    if not panel.auth.required or panel.auth.session_of(request) is None:
        raise ApiError(401, "not logged in")
    device_id = request.match_info["deviceId"]
    if panel.sources.settings().device(device_id) is None:
        raise ApiError(404, f"unknown device {device_id!r}")
    span = request.query.get("span", "hour")
    if span not in SPANS:
        raise ApiError(400, f"expected one of {', '.join(SPANS)}", "span")
    length, bucket = SPANS[span]
    end = panel.sources.clock.now()
    data = await read_queries.metric_series(request.app[CONTEXT].reader(), device_id, start=end - length, end=end,
                                            bucket_s=bucket, metrics=CHART_METRICS)
    return web.json_response({"device": device_id, "span": span, "from": end - length, "to": end,
                              "bucketSeconds": bucket, "series": data})
