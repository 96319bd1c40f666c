"""Who may do what on the LAN broker (CONTRACT section 1). Pure functions, no I/O."""

from __future__ import annotations

from enum import Enum

from gateway.core.topics import DEVICE_PUBLISH_CHANNELS, DEVICE_SUBSCRIBE_CHANNELS, parse_device_topic


class Access(Enum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    RECEIVE = "receive"


def device_may(device_id: str, access: Access, topic: str) -> bool:
    """A device touches only `device/{its id}/...`: publishes data/ack/status/batch, receives commands.

    Subscribing takes an exact filter (no wildcards): `device/{id}/command`.
    """
    parsed = parse_device_topic(topic)
    if parsed is None or parsed[0] != device_id:
        return False
    if access is Access.PUBLISH:
        return parsed[1] in DEVICE_PUBLISH_CHANNELS
    return parsed[1] in DEVICE_SUBSCRIBE_CHANNELS
