"""The part of the daemon's wiring that starts the local REST API and the panel (app.py calls it when the API is
enabled): aiohttp and the panel's modules are imported only then."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import structlog

from gateway.core.errors import StartupError
from gateway.web.auth import tls_context
from gateway.web.panel import PanelSources, install_panel
from gateway.web.server import ApiServer

if TYPE_CHECKING:
    from gateway.app import Gateway

log = structlog.get_logger(__name__)


async def start_api(gw: Gateway) -> ApiServer:
    """The API server with the panel on it, listening; raises StartupError naming what failed."""
    settings = gw.settings
    try:
        tls = tls_context(settings.panel)
    except OSError as exc:  # ssl.SSLError too: a certificate or key that does not load
        raise StartupError(f"panel TLS certificate {settings.panel.certfile}", exc) from exc
    api = ApiServer(
        settings.api, controller=gw.controller, db_path=gw.loaded.db_path,
        devices=gw.registry.summary, device_state=gw.device_state, health=gw.health,
        clock=gw.clock, metrics=gw.metrics, hubs_unmapped=gw.hubs.view_unmapped, ssl_context=tls,
        retention=settings.retention,
    )
    install_panel(api.app, PanelSources(
        registry=gw.registry, settings=lambda: gw.settings, health=gw.health,
        uplink=lambda: gw.uplink.state if gw.uplink is not None else None,
        clients_connected=gw.broker.clients_connected, db_path=gw.loaded.db_path, clock=gw.clock,
        started_at=gw.started_at, takes_commands=gw.device_drivers.takes_commands,
    ), config_path=str(gw.loaded.path))
    try:
        await api.start()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await api.stop()
        raise StartupError(f"REST API on {settings.api.host}:{settings.api.port}", exc) from exc
    log.info("api.listening", host=settings.api.host, port=api.port, tls=tls is not None)
    return api
