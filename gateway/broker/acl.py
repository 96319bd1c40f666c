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


def client_may(client_id: str, access: Access, topic: str, *, open_acl: bool) -> bool:
    """The broker's ACL. `open_acl` (broker.acl = "open"): any topic outside `device/` is free to every
    logged-in client (a broker shared with other MQTT clients, interoperability tests); `device/` topics
    keep the device rule above in both modes."""
    if device_may(client_id, access, topic):
        return True
    return open_acl and not topic.startswith(DEVICE_TOPICS)


DEVICE_TOPICS = "device/"
