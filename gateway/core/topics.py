"""The LAN topics of CONTRACT section 1: the one place that builds and parses them."""

from __future__ import annotations

DATA = "data"
ACK = "ack"
STATUS = "status"
BATCH = "batch"
COMMAND = "command"
DEVICE_PUBLISH_CHANNELS = frozenset({DATA, ACK, STATUS, BATCH})
DEVICE_SUBSCRIBE_CHANNELS = frozenset({COMMAND})


def device_topic(device_id: str, channel: str) -> str:
    return f"device/{device_id}/{channel}"


def command_topic(device_id: str) -> str:
    return f"device/{device_id}/{COMMAND}"


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """`device/{id}/{channel}` -> (id, channel); None for any other shape."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "device" or not parts[1]:
        return None
    return parts[1], parts[2]


def matches_filter(topic: str, topic_filter: str) -> bool:
    """MQTT filter matching (+ one level, # the rest), for the few filters a device subscribes to."""
    parts, pattern = topic.split("/"), topic_filter.split("/")
    for i, p in enumerate(pattern):
        if p == "#":
            return True
        if i >= len(parts) or (p != "+" and p != parts[i]):
            return False
    return len(parts) == len(pattern)
