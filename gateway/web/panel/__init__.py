"""The local web panel: server-rendered pages (Jinja2), a little JavaScript, live updates over SSE, logins.

`install_panel()` adds it to the REST API's aiohttp app: its routes, templates, static files (everything
ships in this package: the box may be offline), and the login middleware in front of the API.
"""

from __future__ import annotations

import hashlib

import aiohttp_jinja2
import jinja2
from markupsafe import Markup

from gateway import __version__
from gateway.web.aiohttp_web import web
from gateway.web.auth import AUTH, Auth, api_access
from gateway.web.panel import login, pages
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
                  Markup((STATIC_DIR / "panel.css").read_text(encoding="utf-8")))
    app[AUTH] = auth
    app[PANEL] = panel
    app.middlewares.append(api_access)
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("gateway.web.panel", "templates"),
                         autoescape=jinja2.select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
    add = app.router.add_route
    add("GET", "/", pages.overview, name="panel_overview")
    add("GET", "/device/{deviceId}", pages.device, name="panel_device")
    add("GET", "/gateway", pages.gateway, name="panel_gateway")
    add("GET", "/login", login.login_page, name="panel_login_page")
    add("POST", "/login", login.login, name="panel_login")
    add("POST", "/logout", login.logout, name="panel_logout")
    add("GET", "/panel/session", login.whoami, name="panel_session")
    add("GET", "/panel/events", pages.events, name="panel_events")
    add("GET", "/panel/series/{deviceId}", pages.series, name="panel_series")
    app.router.add_static("/panel/static", STATIC_DIR, name="panel_static")

    async def on_shutdown(_: web.Application) -> None:
        feed.shutdown()

    async def on_cleanup(_: web.Application) -> None:
        auth.close()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return panel
