"""The REST API's server: its aiohttp runner on the configured address, and its read-only database connection."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.control.service import Controller
from gateway.core.clock import Clock
from gateway.core.metrics import Metrics
from gateway.settings import ApiSection
from gateway.settings_retention import RetentionSection
from gateway.store import read_queries
from gateway.web.aiohttp_web import web
from gateway.web.api import ROUTES, ApiContext, build_app
from gateway.web.control_routes import CONTROL_ROUTES
from gateway.web.history_api import HISTORY_ROUTES
from gateway.web.hubs_api import HUB_ROUTES, HUBS_UNMAPPED, HubsUnmapped, no_hubs
from gateway.web.metrics_route import METRICS, METRICS_ROUTES, MetricsExposition
from gateway.web.openapi import openapi_document

ALL_ROUTES = (*ROUTES, *HISTORY_ROUTES, *HUB_ROUTES, *CONTROL_ROUTES, *METRICS_ROUTES)

# On stop, requests still running (a command waiting for its ack) get this long before they are cancelled;
# the gateway's whole shutdown budget is a few seconds.
SHUTDOWN_GRACE_S = 1.0


class ApiServer:
    """The REST API on ``settings.host:settings.port`` (port 0: a free one; see :attr:`port`)."""

    def __init__(
        self,
        settings: ApiSection,
        *,
        controller: Controller,
        db_path: Path,
        devices: Callable[[], list[dict[str, Any]]],
        device_state: Callable[[str], dict[str, Any] | None],
        health: Callable[[], dict[str, Any]],
        clock: Clock,
        metrics: Metrics,
        hubs_unmapped: HubsUnmapped = no_hubs,
        ssl_context: ssl.SSLContext | None = None,
        retention: RetentionSection | None = None,
    ) -> None:
        self._settings = settings
        self._ssl_context = ssl_context  # TLS when the panel has a certificate (gateway/web/auth.py)
        self._db_path = db_path.absolute()
        self._ctx = ApiContext(
            settings=settings, controller=controller, devices=devices, device_state=device_state, health=health,
            clock=clock, openapi=functools.cache(
                lambda: openapi_document(ALL_ROUTES, title="edge-gateway local API", version=__version__)),
            retention=retention or RetentionSection(),
        )
        self.app = build_app(self._ctx, ALL_ROUTES)
        self.app[HUBS_UNMAPPED] = hubs_unmapped
        self.app[METRICS] = MetricsExposition(metrics)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("ApiServer already started")
        self._ctx.db = await read_queries.open_reader(self._db_path)
        # access_log=None: requests are not worth a log line each; failures are logged by the middleware.
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        try:
            await runner.setup()
            site = web.TCPSite(runner, self._settings.host, self._settings.port, ssl_context=self._ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            await self._close_db()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])  # the composition root logs where we listen

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ApiServer is not started")
        return self._port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._close_db()
        self._port = None

    async def _close_db(self) -> None:
        db, self._ctx.db = self._ctx.db, None
        if db is not None:
            await db.close()
