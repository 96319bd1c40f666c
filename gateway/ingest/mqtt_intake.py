"""What devices publish on the LAN broker, routed by topic to their driver and handed to ingest.

The broker backend (embedded amqtt or a managed Mosquitto) calls this as its `BrokerSink`, on that one
client's path: it may wait (back-pressure on that client) but never raises. Topics are CONTRACT section 1's
`device/{id}/data|status|ack|batch`; the device's driver (by its configured kind) decodes data and acks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from gateway.core import topics
from gateway.core.clock import Clock
from gateway.core.errors import PayloadError, StoreClosedError
from gateway.core.links import DeviceIntake, MqttDeviceDriver
from gateway.core.metrics import Metrics
from gateway.core.throttle import LogThrottle
from gateway.ingest.limits import nesting_depth

log = structlog.get_logger(__name__)

DriverOf = Callable[[str], MqttDeviceDriver | None]
BatchSink = Callable[[str, str, str, bytes, float], Awaitable[None]]  # raises PayloadError: quarantine the part
_STATUS_VALUES = {b"online": True, b'"online"': True, b"offline": False, b'"offline"': False}


class MqttIntake:
    def __init__(
        self,
        *,
        intake: DeviceIntake,
        driver_of: DriverOf,
        metrics: Metrics,
        clock: Clock,
        max_json_depth: int = 32,
        batches: BatchSink | None = None,
    ) -> None:
        self._batches = batches  # hub batch parts: (client id, hub id, topic, payload, received at)
        self._max_depth = max_json_depth
        self._intake = intake
        self._driver_of = driver_of  # device id -> its driver; None: not a configured device on this broker
        self._metrics = metrics
        self._clock = clock
        self._log_throttle = LogThrottle()

    # --- BrokerSink -------------------------------------------------------------------------------

    async def message(self, client_id: str, topic: str, payload: bytes) -> asyncio.Future[None] | None:
        try:
            try:
                await self._route(client_id, topic, payload)
            except StoreClosedError:
                raise
            except Exception as exc:
                # A bug here must not kill the client's broker loop. The message is acknowledged (sent again, it
                # would meet the same bug and hold up the device for good), so it is kept: quarantined with the
                # error as its reason, logged with its traceback, counted.
                self._metrics.inc("gateway_ingest_errors_total", 1, "unexpected errors in ingest")
                left_out = self._log_throttle.allow(type(exc).__name__)
                if left_out is not None:  # with its traceback, once a minute per kind of error
                    log.exception("ingest.error", client_id=client_id, topic=topic, left_out_since_last=left_out)
                parsed = topics.parse_device_topic(topic)
                reason = f"internal error while handling it: {type(exc).__name__}: {exc}"[:500]
                await self._quarantine(client_id, parsed[0] if parsed else None, topic, payload, reason)
        except StoreClosedError as exc:
            self._metrics.inc("gateway_ingest_rejected_closed_total", 1, "messages refused during shutdown")
            if self._metrics.value("gateway_ingest_rejected_closed_total") == 1:  # once, not per message
                log.warning("ingest.store_closed", client_id=client_id, topic=topic)
            return _refused(exc)  # not stored: the device must keep it and send it again
        except Exception as exc:
            # Not even the quarantine took it: unacknowledged, so the device keeps it and sends it again.
            log.exception("ingest.not_kept", client_id=client_id, topic=topic)
            return _refused(exc)
        # Whatever this message produced is queued now; the receipt also covers what came before it, which
        # keeps acknowledgements in arrival order.
        return self._intake.receipt()

    async def connection(self, client_id: str, connected: bool) -> None:
        if self._driver_of(client_id) is None:
            return
        if connected:
            self._intake.seen(client_id, self._clock.now())
        try:
            await self._intake.presence(client_id, connected, "connected" if connected else "disconnected")
        except StoreClosedError:
            log.info("ingest.status_after_close", device_id=client_id, online=connected)

    async def subscribed(self, client_id: str, topic_filter: str) -> None:
        if self._driver_of(client_id) is None:
            return
        if topics.matches_filter(topics.command_topic(client_id), topic_filter):
            self._intake.command_ready(client_id)

    # --- routing ----------------------------------------------------------------------------------

    async def _route(self, client_id: str, topic: str, payload: bytes) -> None:
        parsed = topics.parse_device_topic(topic)
        if parsed is None:
            await self._quarantine(client_id, None, topic, payload, "topic is not device/{id}/{channel}")
            return
        device_id, channel = parsed
        driver = self._driver_of(device_id)
        if driver is None:
            await self._quarantine(client_id, device_id, topic, payload, f"unknown device {device_id!r}")
            return
        self._metrics.inc("gateway_ingest_messages_total", 1, "messages received from devices", channel=channel)
        now = self._clock.now()
        self._intake.seen(device_id, now)
        try:
            if nesting_depth(payload, self._max_depth) > self._max_depth:
                raise PayloadError(f"JSON nested deeper than {self._max_depth} levels")
            if channel == topics.DATA:
                await self._intake.accept(driver.decode_reading(device_id, payload, now))
            elif channel == topics.STATUS:
                online = _STATUS_VALUES.get(payload.strip())
                if online is None:
                    raise PayloadError('status must be "online" or "offline"')
                await self._intake.presence(device_id, online, "status")
            elif channel == topics.ACK:
                await self._intake.acknowledged(device_id, driver.decode_ack(payload))
            elif channel == topics.BATCH:
                if self._batches is None:
                    raise PayloadError("hub batches are not taken by this gateway")
                await self._batches(client_id, device_id, topic, payload, now)  # the demultiplexer (hub_intake.py)
            else:
                raise PayloadError(f"unknown channel {channel!r}")
        except PayloadError as exc:
            await self._quarantine(client_id, device_id, topic, payload, str(exc))

    async def _quarantine(self, client_id: str, device_id: str | None, topic: str, payload: bytes, reason: str) -> None:
        await self._intake.quarantine(
            device_id=device_id, source=client_id, topic=topic, payload=payload, reason=reason
        )


def _refused(exc: Exception) -> asyncio.Future[None]:
    """A receipt that says "not stored": no PUBACK for this message, nor for any after it on its connection."""
    refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    refused.set_exception(exc)
    return refused
