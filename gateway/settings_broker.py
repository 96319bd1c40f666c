"""The [broker] section of the config: the LAN broker's backend, listeners, limits and ACL mode."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, field_validator, model_validator

from gateway.settings_mosquitto import MosquittoSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenerSettings(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 1883
    # TLS when both are given; cafile additionally asks clients for a certificate signed by it.
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    max_connections: Annotated[int, Field(ge=-1)] = -1

    @model_validator(mode="after")
    def _tls_pair(self) -> ListenerSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together: give both for TLS, or neither")
        if self.cafile is not None and self.certfile is None:
            raise ValueError("cafile needs certfile and keyfile (client certificates need a TLS listener)")
        for label, path in (("certfile", self.certfile), ("keyfile", self.keyfile), ("cafile", self.cafile)):
            if path is not None and not path.is_file():
                raise ValueError(f"{label} {str(path)!r} does not exist or is not a file")
        return self

    @property
    def tls(self) -> bool:
        return self.certfile is not None


class BrokerSection(_Strict):
    # Which LAN broker runs (gateway.broker.create_lan_broker): the embedded amqtt broker, or a managed
    # Mosquitto child ([broker.mosquitto], gateway/settings_mosquitto.py).
    backend: Literal["embedded", "mosquitto"] = "embedded"
    mosquitto: MosquittoSettings = Field(default_factory=MosquittoSettings)
    allow_anonymous: bool = False
    listeners: list[ListenerSettings] = Field(
        default_factory=lambda: [ListenerSettings(name="lan", host="0.0.0.0", port=1883)], min_length=1
    )
    # A client silent for this many times its keepalive is disconnected (its Will then fires).
    keepalive_grace: Annotated[float, Field(ge=1.0, le=10.0)] = 1.5
    # A packet announcing more bytes than this closes its connection before they are read. Payloads over
    # 64 KiB are quarantined (kept, with the reason); this bounds what one packet can make the daemon hold.
    max_packet_bytes: Annotated[int, Field(ge=66 * 1024, le=16 * 1024 * 1024)] = 256 * 1024
    # A connection that has not sent its CONNECT this long after it opened is closed.
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    # A disconnected persistent session (and its offline queue) is dropped after this many seconds.
    session_expiry_seconds: Annotated[int, Field(ge=1)] = 3600
    # Connection limits: a connection over one is closed as soon as it is accepted, before anything is read
    # (gateway/broker/admission.py). The unit's LimitNOFILE must leave room for max_connections.
    max_connections: Annotated[int, Field(ge=1)] = 1000  # open connections in total, logged in or not
    max_pending_connections: Annotated[int, Field(ge=1)] = 200  # connections that have not logged in yet
    max_connections_per_source: Annotated[int, Field(ge=1)] = 20  # open connections from one address...
    unlimited_sources: tuple[IPvAnyAddress, ...] = (IPv4Address("127.0.0.1"), IPv6Address("::1"))  # ...but these
    # Password checks (argon2) running at once; each holds the hash's memory cost (19 MiB for hashes from
    # `hash-password`) while it runs. The others wait their turn.
    max_password_checks: Annotated[int, Field(ge=1, le=16)] = 1
    # QoS 1 messages (commands) kept for a device with a persistent session while it is offline; when full,
    # the oldest is dropped for the new one. Unacknowledged ones are sent again, with DUP, when it reconnects.
    offline_queue: Annotated[int, Field(ge=1, le=10_000)] = 100
    # Who may publish and subscribe what. "devices": each client is a configured device and touches only its
    # own device/{id}/... topics (CONTRACT section 1). "open": topics outside device/ are free to every
    # logged-in client (a broker shared with other MQTT clients); device/ topics keep the device rule.
    acl: Literal["devices", "open"] = "devices"

    @field_validator("listeners")
    @classmethod
    def _unique_listeners(cls, value: list[ListenerSettings]) -> list[ListenerSettings]:
        names = [listener.name for listener in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"listener names must be unique, repeated: {', '.join(dupes)}")
        return value
