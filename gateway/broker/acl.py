"""Who may do what on the LAN broker (CONTRACT section 1). Pure functions, no I/O."""

from __future__ import annotations

from enum import Enum

DEVICE_PUBLISH_CHANNELS = frozenset({"data", "ack", "status", "batch"})
DEVICE_SUBSCRIBE_CHANNELS = frozenset({"command"})


class Access(Enum):
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    RECEIVE = "receive"


def device_may(device_id: str, access: Access, topic: str) -> bool:
    """A device touches only `device/{its id}/...`: publishes data/ack/status/batch, receives commands.

    Subscribing takes an exact filter (no wildcards): `device/{id}/command`.
    """
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "device" or parts[1] != device_id:
        return False
    if access is Access.PUBLISH:
        return parts[2] in DEVICE_PUBLISH_CHANNELS
    return parts[2] in DEVICE_SUBSCRIBE_CHANNELS
