"""The panel's state on the app (one per server, reached through a typed key): sources, logins, live feed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.web.aiohttp_web import web
from gateway.web.auth import Auth
from gateway.web.panel.live import LiveFeed
from gateway.web.panel.rows import Formats, PanelSources

if TYPE_CHECKING:
    import jinja2

STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass(slots=True)
class Panel:
    sources: PanelSources
    auth: Auth
    feed: LiveFeed
    formats: Formats
    keepalive_s: float
    config_path: str
    asset_version: str
    inline_css: str  # panel.css, read once: every page carries it in its <head>
    templates: jinja2.Environment | None = None  # made at the first page (gateway/web/panel/login.py)

    def static_url(self, name: str) -> str:
        """An asset's URL; the version in the query makes browsers fetch it anew after an upgrade."""
        return f"/panel/static/{name}?v={self.asset_version}"


PANEL = web.AppKey("edge_gateway_panel", Panel)
