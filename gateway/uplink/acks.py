"""QoS 1 publishing with a PUBACK callback, for the outbox lanes.

aiomqtt's ``publish()`` costs a task, an Event and a wait per message, which at a few thousand readings
a second was a large part of the uplink's CPU (profiled). The outbox only needs to know *which* message
the cloud acknowledged, so the lanes publish through the paho client that aiomqtt drives and get the
PUBACK as a callback. aiomqtt stays in charge of the connection, the socket and every other publish.
Uses ``aiomqtt.Client._client`` (the paho client): aiomqtt is pinned below 3 in pyproject.toml.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import aiomqtt
import paho.mqtt.client as paho

T = TypeVar("T")
_MISSING = object()


class AckTracker(Generic[T]):
    """Publishes QoS 1 messages and calls ``on_ack(token)`` when the broker's PUBACK for one arrives."""

    def __init__(self, client: aiomqtt.Client, on_ack: Callable[[T], None]) -> None:
        self._paho: paho.Client = client._client
        self._on_ack = on_ack
        self._pending: dict[int, T] = {}
        inner = self._paho.on_publish  # aiomqtt's own: publishes that are not ours still reach it

        def on_publish(c: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
            token = self._pending.pop(mid, _MISSING)
            if token is _MISSING:
                if inner is not None:
                    inner(c, userdata, mid, reason_code, properties)  # type: ignore[call-arg]
                return
            self._on_ack(token)  # type: ignore[arg-type]

        self._paho.on_publish = on_publish

    def publish(self, topic: str, payload: bytes, token: T) -> None:
        """Hand the message to paho (it writes when the socket can take it); raises if the link is down."""
        info = self._paho.publish(topic, payload, 1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        # A QoS 1 PUBACK is read by the event loop later, never inside publish(): recording it now is safe.
        self._pending[info.mid] = token
