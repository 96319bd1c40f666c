"""What the managed Mosquitto reads: its config, password file and ACL file, written owner-only (0600).

Every start (and every config reload, for the password and ACL files) writes them from the gateway's own
config; nothing in them is meant to be edited. The ACL gives each device CONTRACT section 1's topics by
`pattern` lines with `%u` (its username, the device id), so it does not grow with the device list; the
gateway's own user reads every device's data/ack/status/batch and writes every command topic.
"""

from __future__ import annotations

import math
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.core.topics import DEVICE_PUBLISH_CHANNELS, DEVICE_SUBSCRIBE_CHANNELS, device_topic
from gateway.settings_broker import BrokerSection

GATEWAY_USER = "_gateway"  # cannot be a device id (those start with a letter or digit)
CONFIG_NAME, PASSWORDS_NAME, ACL_NAME, SOCKET_NAME = "mosquitto.conf", "passwords", "acl", "ingest.sock"
PID_NAME, PERSISTENCE_NAME = "mosquitto.pid", "mosquitto.db"
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; Mosquitto refuses a longer socket path


@dataclass(frozen=True)
class IngestEndpoint:
    """Where the gateway's own client connects: a unix socket in the state dir, or a loopback port when the
    state dir's path is too long for a socket."""

    socket_path: Path | None
    port: int

    def config_line(self) -> str:
        if self.socket_path is not None:
            return f"listener 0 {self.socket_path}"
        return f"listener {self.port} 127.0.0.1"


def ingest_endpoint(directory: Path, free_port: int) -> IngestEndpoint:
    path = directory / SOCKET_NAME
    if len(str(path)) <= _UNIX_PATH_MAX:
        return IngestEndpoint(path, 0)
    return IngestEndpoint(None, free_port)


def mosquitto_conf(broker: BrokerSection, directory: Path, ingest: IngestEndpoint, ports: list[int], *,
                   device_listeners: bool = True) -> str:
    """The config file; `ports[i]` is the port listener i binds (its configured one, or a free one for 0).
    Without `device_listeners`, only the gateway's own client can connect."""
    m = broker.mosquitto
    lines = [
        "# Written by edge-gateway at each start from its [broker] section: edits here are overwritten.",
        "per_listener_settings false",
        f"allow_anonymous {_bool(broker.allow_anonymous)}",
        f"password_file {directory / PASSWORDS_NAME}",
        f"acl_file {directory / ACL_NAME}",
        # Explicit limits: the default max_queued_messages (1000) silently drops QoS 1 messages.
        f"max_queued_messages {m.max_queued_messages}",
        f"max_queued_bytes {m.max_queued_bytes}",
        f"max_inflight_messages {m.max_inflight_messages}",
        f"max_packet_size {broker.max_packet_bytes}",
        f"persistent_client_expiration {max(1, math.ceil(broker.session_expiry_seconds / 3600))}h",
        f"persistence {_bool(m.persistence)}",
        f"persistence_location {directory}/",
        f"persistence_file {PERSISTENCE_NAME}",
        f"autosave_interval {m.autosave_interval_seconds}",
        f"pid_file {directory / PID_NAME}",  # a Mosquitto left behind by a daemon killed with -9 is found by it
        # Presence comes from the connection log (connection_log.py): these lines, no timestamps.
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_type subscribe",
        "connection_messages true",
        "log_timestamp false",
    ]
    if os.getuid() == 0:
        lines.append(f"user {pwd.getpwuid(0).pw_name}")  # as root, Mosquitto drops to "mosquitto": not our files
    lines += ["", "# the gateway's own client", ingest.config_line()]
    if not device_listeners:
        return "\n".join(lines) + "\n"
    for listener, port in zip(broker.listeners, ports, strict=True):
        # (Listener options go after their `listener` line: before any, Mosquitto adds a listener on 1883.)
        lines += ["", f"# {listener.name}", f"listener {port} {listener.host}"]
        if not broker.allow_anonymous:
            # The client id is the username: a device resumes or takes over only its own session.
            # (With anonymous access on, Mosquitto would refuse every client without a username.)
            lines.append("use_username_as_clientid true")
        if listener.max_connections >= 0:
            lines.append(f"max_connections {listener.max_connections}")
        if listener.tls:
            lines += [f"certfile {listener.certfile}", f"keyfile {listener.keyfile}"]
            if listener.cafile is not None:
                lines += [f"cafile {listener.cafile}", "require_certificate true"]
    return "\n".join(lines) + "\n"


def password_file(devices: Mapping[str, str | None], gateway_hash: str) -> str:
    """`user:$7$...` lines; a device without a Mosquitto hash has no line (it logs in only anonymously)."""
    lines = [f"{GATEWAY_USER}:{gateway_hash}"]
    lines += [f"{device_id}:{h}" for device_id, h in devices.items() if h is not None]
    return "\n".join(lines) + "\n"


def acl_file(devices: Mapping[str, str | None], *, allow_anonymous: bool) -> str:
    """CONTRACT section 1: a device publishes its data/ack/status/batch and reads its command topic."""
    publish, subscribe = sorted(DEVICE_PUBLISH_CHANNELS), sorted(DEVICE_SUBSCRIBE_CHANNELS)
    lines = ["# Written by edge-gateway: edits here are overwritten."]
    if allow_anonymous:
        # Lines before the first `user` apply to anonymous clients: only the devices with no password.
        lines.append("# anonymous clients: the devices configured without a password")
        for device_id, h in devices.items():
            if h is None:
                lines += [f"topic write {device_topic(device_id, c)}" for c in publish]
                lines += [f"topic read {device_topic(device_id, c)}" for c in subscribe]
    lines += ["", f"user {GATEWAY_USER}"]
    lines += [f"topic read {device_topic('+', c)}" for c in publish]
    lines += [f"topic write {device_topic('+', c)}" for c in subscribe]
    lines += ["", "# every device: its own topics (%u: its username, the device id)"]
    lines += [f"pattern write {device_topic('%u', c)}" for c in publish]
    lines += [f"pattern read {device_topic('%u', c)}" for c in subscribe]
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (created 0600, never world-readable on the way)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.chmod(0o600)  # an older file of that name kept its mode through O_CREAT
    tmp.replace(path)


def _bool(value: bool) -> str:
    return "true" if value else "false"
