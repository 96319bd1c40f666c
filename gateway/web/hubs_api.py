"""REST routes of hubs (CONTRACT section 3): what a hub relays that maps to no configured device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.core.errors import NotFoundError
from gateway.web.aiohttp_web import web
from gateway.web.api import Call
from gateway.web.openapi import Reply, Route

# hub id -> its unmapped logical devices (None: not a configured hub); set by the server
HubsUnmapped = Callable[[str], dict[str, Any] | None]
HUBS_UNMAPPED: web.AppKey[HubsUnmapped] = web.AppKey("edge_gateway_hubs_unmapped")


def no_hubs(hub_id: str) -> dict[str, Any] | None:
    return None


async def hub_unmapped(call: Call) -> web.StreamResponse:
    hub_id = call.request.match_info["hubId"]
    view = call.request.app[HUBS_UNMAPPED](hub_id)
    if view is None:
        raise NotFoundError("hub", hub_id)
    return web.json_response(view)


_UNMAPPED = {"type": "object", "properties": {
    "hub": {"type": "string"},
    "readings": {"type": "integer", "description": "Unmapped readings since the gateway started"},
    "notListed": {"type": "integer", "description": "Of them, readings of devices beyond hubs.max_unmapped_listed"},
    "devices": {"type": "array", "items": {"type": "object", "properties": {
        "by": {"enum": ["device", "mac"], "description": "Named by the hub, or a relayed advertiser's MAC"},
        "name": {"type": "string"}, "count": {"type": "integer"}, "firstSeen": {"type": "number"},
        "lastSeen": {"type": "number"}, "reason": {"type": "string"},
        "sample": {"type": "string", "description": "What the hub sent for it (JSON, first 256 characters)"}}}},
}}

HUB_ROUTES: tuple[Route, ...] = (
    Route("GET", "/api/hubs/{hubId}/unmapped", hub_unmapped, "Logical devices a hub relays that map to no "
          "configured device", "hubs", {200: Reply("Counted and listed, the most heard first", _UNMAPPED)},
          errors=(404,), description="Add them under [[hubs.mappings]] (or the BLE devices) in the config. The list "
          "is kept in memory: it starts empty after a restart and refills with the hubs' next batches."),
)
