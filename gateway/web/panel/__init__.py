"""The local web panel: server-rendered pages (Jinja2), a little JavaScript, live updates over SSE, logins.

`install_panel()` adds it to the REST API's aiohttp app: its routes, templates, static files (everything
ships in this package: the box may be offline), and the login middleware in front of the API.

The page handlers (`pages`, `login`) and Jinja2 are imported at the first request to a panel route, not
at start: on a box where nobody opens the panel they would hold ~2-3 MB of a 60 MB budget for nothing.
The login middleware in front of the API (`gateway.web.auth`) is always installed.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Awaitable, Callable

from gateway import __version__
from gateway.web.aiohttp_web import web
from gateway.web.auth import AUTH, Auth, api_access
from gateway.web.panel.context import PANEL, STATIC_DIR, Panel
from gateway.web.panel.live import LiveFeed
from gateway.web.panel.rows import Formats, PanelSources, UplinkView

__all__ = ["PanelSources", "UplinkView", "install_panel"]


def install_panel(app: web.Application, sources: PanelSources, *, config_path: str) -> Panel:
    """Add the panel and the API's logins to `app` (before the server starts)."""
    settings = sources.settings()
    auth = Auth(settings.users, settings.panel, clock=sources.clock)
    feed = LiveFeed(sources)
    panel = Panel(sources, auth, feed, Formats(settings.gateway.timezone), settings.panel.keepalive_seconds,
                  config_path, hashlib.sha256(__version__.encode()).hexdigest()[:8],
                  (STATIC_DIR / "panel.css").read_text(encoding="utf-8"))
    app[AUTH] = auth
    app[PANEL] = panel
    app.middlewares.append(api_access)
    add = app.router.add_route
    add("GET", "/", _deferred("pages", "overview"), name="panel_overview")
    add("GET", "/device/{deviceId}", _deferred("pages", "device"), name="panel_device")
    add("GET", "/gateway", _deferred("pages", "gateway"), name="panel_gateway")
    add("GET", "/login", _deferred("login", "login_page"), name="panel_login_page")
    add("POST", "/login", _deferred("login", "login"), name="panel_login")
    add("POST", "/logout", _deferred("login", "logout"), name="panel_logout")
    add("GET", "/panel/session", _deferred("login", "whoami"), name="panel_session")
    add("GET", "/panel/events", _deferred("pages", "events"), name="panel_events")
    add("GET", "/panel/series/{deviceId}", _deferred("pages", "series"), name="panel_series")
    app.router.add_static("/panel/static", STATIC_DIR, name="panel_static")

    async def on_shutdown(_: web.Application) -> None:
        feed.shutdown()

    async def on_cleanup(_: web.Application) -> None:
        auth.close()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return panel


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _deferred(module: str, name: str) -> Handler:
    """The handler `name` of `gateway.web.panel.<module>`, imported at the route's first request."""
    resolved: list[Handler] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if not resolved:
            resolved.append(getattr(importlib.import_module(f"gateway.web.panel.{module}"), name))
        return await resolved[0](request)

    handler.__name__ = handler.__qualname__ = name
    return handler
