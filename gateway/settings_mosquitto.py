"""`[broker.mosquitto]`: the managed Mosquitto child of `broker.backend = "mosquitto"` (gateway/broker/mosquitto/).

Devices on this backend log in with `password_hash_mosquitto` (Mosquitto's PBKDF2 format, see
gateway/core/passwords_mosquitto.py); the checks that span devices and the broker are `device_problems`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Protocol

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MosquittoSettings(_Strict):
    binary: Path = Path("/usr/sbin/mosquitto")  # Debian's package (install.sh installs it for this backend)
    # Messages Mosquitto queues for one client beyond its inflight window, the gateway's own ingest session
    # included (0: no limit). Mosquitto's default, 1000, silently drops QoS 1 messages past it.
    max_queued_messages: Annotated[int, Field(ge=0)] = 0
    max_queued_bytes: Annotated[int, Field(ge=0)] = 0  # 0: no limit
    # QoS 1 messages on their way to one client, unacknowledged: for the gateway's ingest session this is how
    # many readings wait for a store commit at once (Mosquitto's default, 20, caps ingest at ~20 per commit).
    max_inflight_messages: Annotated[int, Field(ge=1, le=65535)] = 1000
    # Sessions, queued messages and retained ones kept on disk (state dir), saved this often and at a clean
    # stop: what Mosquitto acknowledged to a device and the gateway had not yet committed survives a crash
    # of Mosquitto only if a save came between (see the README).
    persistence: bool = True
    autosave_interval_seconds: Annotated[int, Field(ge=1, le=86400)] = 60


class _Device(Protocol):
    id: str
    password_hash_mosquitto: str | None


def device_problems(devices: Iterable[_Device], *, allow_anonymous: bool,
                    never_log_in: set[str]) -> list[tuple[str, str]]:
    """(field path, message) for devices that could not log in to Mosquitto."""
    problems: list[tuple[str, str]] = []
    for index, device in enumerate(devices):
        where = f"devices.{index}[id={device.id}]"
        if ":" in device.id:
            problems.append((f"{where}.id", "a device id with ':' cannot log in to Mosquitto "
                                            "(its password file separates name and hash with ':')"))
        if device.password_hash_mosquitto is None and not allow_anonymous and device.id not in never_log_in:
            problems.append((f"{where}.password_hash_mosquitto",
                             'required with broker.backend = "mosquitto" while broker.allow_anonymous is false '
                             "(make one with `edge-gateway hash-password --for mosquitto`)"))
    return problems
