"""The installer's configuration: TOML files validated by pydantic models.

Errors are reported as `FILE: section.field.path: message`, every one of them at once, and nothing
is silently dropped or "fixed" (unknown keys are errors too: a typo must not pass as a default).
"""

from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.core.errors import ConfigError
from gateway.core.passwords import argon2_hash_problem
from gateway.core.passwords_mosquitto import mosquitto_hash_problem
from gateway.settings_ble import BleSection
from gateway.settings_broker import BrokerSection
from gateway.settings_hubs import HubsSection
from gateway.settings_modbus import ModbusSection, check_maps
from gateway.settings_mosquitto import device_problems
from gateway.settings_retention import RetentionSection
from gateway.settings_users import PanelSection, Users

# Device ids appear in MQTT topics and as usernames: no wildcards, separators or spaces.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Strict):
    id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    org: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    timezone: str = "UTC"
    # None: $STATE_DIRECTORY (set by systemd's StateDirectory=) or ./var
    data_dir: Path | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {value!r}") from exc
        return value

    def resolved_data_dir(self, config_dir: Path) -> Path:
        if self.data_dir is not None:
            return self.data_dir if self.data_dir.is_absolute() else config_dir / self.data_dir
        state_dir = os.environ.get("STATE_DIRECTORY")
        if state_dir:
            return Path(state_dir.split(":")[0])
        return Path.cwd() / "var"


class DeviceSettings(_Strict):
    id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    kind: str = "purifier"  # a kind drivers/registry.py knows
    name: str = ""
    room: str = ""
    # argon2 hash from `edge-gateway hash-password`; None only when broker.allow_anonymous is on
    password_hash: str | None = None
    # The broker.backend = "mosquitto" login: `edge-gateway hash-password --for mosquitto` (PBKDF2-SHA512)
    password_hash_mosquitto: str | None = None

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        # The settings are the composition's config: they may name the driver registry (kinds only, no driver
        # module is imported here).
        from drivers.registry import known_kinds

        kinds = known_kinds()
        if value not in kinds:
            raise ValueError(f"unknown device kind {value!r} (known: {', '.join(kinds)})")
        return value

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: str | None) -> str | None:
        problem = argon2_hash_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("password_hash_mosquitto")
    @classmethod
    def _mosquitto_pbkdf2(cls, value: str | None) -> str | None:
        problem = mosquitto_hash_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value


class StorageSection(_Strict):
    db_file: str = "gateway.db"  # relative to gateway.data_dir
    # Group commit: a batch is committed when it holds max_batch rows or its oldest row waited this long.
    commit_interval_ms: Annotated[float, Field(gt=0, le=1000)] = 5.0
    # Everything a batch holds stays allocated until its commit, and a burst's peak stays resident (Python
    # keeps the memory of its small objects once used). 250 kept the flat-out QoS 1 rate that 1,000 had
    # here, with ~1 MB less resident after a burst; 100 cost ~10 % of the rate.
    max_batch: Annotated[int, Field(ge=1, le=100_000)] = 250
    # Rows waiting for the writer; when full, producers wait (back-pressure), nothing is dropped. 100
    # purifiers with a 20-message QoS 1 window have 2,000 readings in flight: the queue need not hold
    # them all (the rest wait, unread, in their sockets). 250 measured the same rate as 2,000 here.
    queue_size: Annotated[int, Field(ge=10)] = 250
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    # When readings trickle in (a quiet spell before the first one), hold it this long so later ones share
    # its transaction. 0: commit at once. 1000 cuts idle CPU (~0.95 % -> ~0.80 % of a core with 100
    # purifiers at 1 reading / 10 s here) and SD-card writes ~10x; devices then wait up to this long for
    # their PUBACK (a QoS 1 message is acknowledged once committed).
    idle_linger_ms: Annotated[float, Field(ge=0, le=5000)] = 0.0


class IngestSection(_Strict):
    """What a reading must look like to be accepted (anything else is quarantined with the reason)."""

    # JSON nested deeper than this is refused before it is parsed (Python's parser fails at ~1,000 levels
    # anyway, and a reading is two levels deep).
    max_json_depth: Annotated[int, Field(ge=2, le=512)] = 32
    # A reading's own time must lie between this date (UTC) and this far ahead of the gateway's clock.
    earliest_timestamp: date = date(2000, 1, 1)
    max_future_minutes: Annotated[float, Field(ge=0, le=10_080)] = 10.0


class LoggingSection(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"  # auto: console on a terminal, JSON otherwise


class UplinkSection(_Strict):
    """The cloud broker (CONTRACT section 2). Off by default: the gateway works without a cloud."""

    enabled: bool = False
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    tls: bool = True
    ca_file: Path | None = None  # None: the system's CAs
    client_cert: Path | None = None  # with client_key: mutual TLS
    client_key: Path | None = None
    username: str | None = None
    password: str | None = None
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 60
    # QoS 1 messages in flight, counting those whose outbox row is not yet deleted: after a crash at
    # most this many are sent again.
    inflight: Annotated[int, Field(ge=1, le=1000)] = 20
    # While live data flows, the backlog may use at most this share of the in-flight window.
    backlog_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    batch: bool = False  # telemetry as v1/telemetry/{org}/{gatewayId}/batch messages
    batch_max_readings: Annotated[int, Field(ge=1, le=10_000)] = 200
    batch_max_bytes: Annotated[int, Field(ge=1024, le=10_000_000)] = 128 * 1024
    reconnect_max_seconds: Annotated[float, Field(ge=1, le=3600)] = 60.0
    # While the cloud is unreachable, a bare TCP connect this often (jittered) ends the back-off as soon as
    # it is back (uplink/reachability.py).
    probe_interval_seconds: Annotated[float, Field(ge=0.1, le=60)] = 1.0

    @model_validator(mode="after")
    def _tls_files(self) -> UplinkSection:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together")
        for label, path in (("ca_file", self.ca_file), ("client_cert", self.client_cert),
                            ("client_key", self.client_key)):
            if path is not None and not path.is_file():
                raise ValueError(f"{label} {str(path)!r} does not exist or is not a file")
        return self


class OutboxSection(_Strict):
    """What waits for the cloud, and what is given up first when the disk budget is reached."""

    max_rows: Annotated[int, Field(ge=100)] = 2_000_000
    max_bytes: Annotated[int, Field(ge=64 * 1024)] = 512 * 1024 * 1024
    ttl_days: Annotated[float, Field(gt=0)] = 7.0
    # Events and command results are kept over the budget, up to this many.
    events_hard_cap: Annotated[int, Field(ge=100)] = 200_000
    prune_interval_seconds: Annotated[float, Field(gt=0)] = 30.0


class ControlSection(_Strict):
    """Commands to devices: how long to wait for an ack, how often to try, how patient to be after failures."""

    command_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    command_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    max_pending_per_device: Annotated[int, Field(ge=1, le=1000)] = 32
    # After a command the reconciler sent failed or timed out, it waits this long before trying again
    # (doubling up to the maximum), unless a layer changes or the device reconnects.
    retry_backoff_seconds: Annotated[float, Field(gt=0)] = 30.0
    retry_backoff_max_seconds: Annotated[float, Field(gt=0)] = 900.0
    # After this many failed drives of a device in a row (its own commands, or a person's that failed), the
    # reconciler stops until a layer changes, a command is sent or the device reconnects.
    redrive_limit: Annotated[int, Field(ge=1, le=1000)] = 8
    # Unused since the gateway's own timer fires every schedule boundary (a late one is applied whenever the
    # timer gets to it). Still accepted, so configs written for earlier versions keep loading.
    misfire_grace_seconds: Annotated[int, Field(ge=1)] = 300


class ApiSection(_Strict):
    """The local REST API and the panel. Logins: [[users]] and [panel] (gateway/settings_users.py)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # Longest a POST /api/device/{id}/command waits for the device's ack before answering 202.
    command_wait_seconds: Annotated[float, Field(gt=0, le=600)] = 100.0


class Settings(_Strict):
    gateway: GatewaySection
    broker: BrokerSection = Field(default_factory=BrokerSection)
    devices: list[DeviceSettings] = Field(default_factory=list)
    storage: StorageSection = Field(default_factory=StorageSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    uplink: UplinkSection = Field(default_factory=UplinkSection)
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    control: ControlSection = Field(default_factory=ControlSection)
    api: ApiSection = Field(default_factory=ApiSection)
    modbus: ModbusSection = Field(default_factory=ModbusSection)
    hubs: HubsSection = Field(default_factory=HubsSection)
    ble: BleSection = Field(default_factory=BleSection)
    users: Users = Field(default_factory=list)  # panel and API logins (gateway/settings_users.py)
    panel: PanelSection = Field(default_factory=PanelSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)

    def cross_check(self) -> list[tuple[str, str]]:
        """Rules spanning sections, as (field path, message): pydantic cannot place these on a field."""
        problems: list[tuple[str, str]] = self.hubs.problems({d.id: d.kind for d in self.devices})
        seen: set[str] = set()
        through_hubs = self.hubs.reached_through_hubs()  # they never log in
        for index, device in enumerate(self.devices):
            where = f"devices.{index}[id={device.id}]"
            if device.id in seen:
                problems.append((f"{where}.id", f"device id {device.id!r} appears more than once"))
            seen.add(device.id)
            if (device.password_hash is None and not self.broker.allow_anonymous and device.id not in through_hubs
                    and self.broker.backend == "embedded"):
                problems.append(
                    (f"{where}.password_hash", "required while broker.allow_anonymous is false")
                )
        if self.broker.backend == "mosquitto":
            problems += device_problems(self.devices, allow_anonymous=self.broker.allow_anonymous,
                                        never_log_in=through_hubs)
        problems += self.modbus.cross_check(list(seen), {d.id: d.kind for d in self.devices})
        seen.update(self.modbus.device_kinds())
        for index, ble_device in enumerate(self.ble.devices):
            if ble_device.id in seen:
                problems.append((f"ble.devices.{index}[id={ble_device.id}].id",
                                 f"device id {ble_device.id!r} appears more than once"))
            seen.add(ble_device.id)
        return problems

    def restart_needed_for(self, old: Settings) -> list[str]:
        """What a reload from `old` to these settings cannot apply while running (the daemon logs it): a
        reload applies devices, passwords, the ACL, hub mappings and logging."""
        needed = [
            name for name in ("gateway", "storage", "ingest", "uplink", "outbox", "control", "api", "modbus", "ble",
                              "users", "panel", "retention")
            if getattr(self, name) != getattr(old, name)
        ]
        if self.hubs.model_copy(update={"mappings": []}) != old.hubs.model_copy(update={"mappings": []}):
            needed.append("hubs (limits; mappings are applied)")
        if self.broker.listeners != old.broker.listeners or self.broker.keepalive_grace != old.broker.keepalive_grace:
            needed.append("broker.listeners")
        return needed

    def device_kinds(self) -> dict[str, str]:
        """Every configured device (LAN broker, Modbus and BLE) -> its driver kind."""
        return {**{d.id: d.kind for d in self.devices}, **self.modbus.device_kinds(), **self.ble.kinds()}

    def device(self, device_id: str) -> DeviceSettings | None:
        for device in self.devices:
            if device.id == device_id:
                return device
        return None


class LoadedSettings(BaseModel):
    """Settings plus where they came from (relative paths resolve against the file's folder)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    settings: Settings
    path: Path

    @property
    def data_dir(self) -> Path:
        return self.settings.gateway.resolved_data_dir(self.path.parent)

    @property
    def db_path(self) -> Path:
        return self.data_dir / self.settings.storage.db_file


def load_settings(path: Path | str) -> LoadedSettings:
    """Read and validate a config file; raise ConfigError listing every problem as `FILE: path: msg`."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax: {exc}"]) from None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([f"{path}: {_location(err['loc'], raw)}: {_message(err)}{_hint(err)}"
                           for err in exc.errors()]) from None
    problems = settings.cross_check()
    if problems:
        raise ConfigError([f"{path}: {where}: {message}" for where, message in problems])
    map_errors = check_maps(settings.modbus, path)
    if map_errors:
        raise ConfigError(map_errors)
    return LoadedSettings(settings=settings, path=path.resolve())


def _location(loc: tuple[int | str, ...], raw: object) -> str:
    """`devices.2.password_hash`, or `(top level)`; a list index also names the device id when known."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            label = str(item)
            if isinstance(node, list) and item < len(node):
                node = node[item]
                ident = node.get("id") if isinstance(node, dict) else None
                if isinstance(ident, str) and ident:
                    label = f"{item}[id={ident}]"
            parts.append(label)
        else:
            parts.append(item)
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) if parts else "(top level)"


_VALUE_ERROR_PREFIX = re.compile(r"^(Value error|Assertion failed), ")


def _hint(err: Any) -> str:
    """` (did you mean 'synchronous'?)` after an unknown key that resembles a field of its section."""
    if err.get("type") != "extra_forbidden":
        return ""
    from gateway.settings_hints import did_you_mean

    match = did_you_mean(Settings, tuple(err["loc"]))
    return f" (did you mean {match!r}?)" if match else ""


def _message(err: object) -> str:
    msg = str(err["msg"]) if isinstance(err, dict) else str(err)
    return _VALUE_ERROR_PREFIX.sub("", msg)
