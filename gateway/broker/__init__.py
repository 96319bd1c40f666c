"""The LAN broker behind one port (gateway.core.ports.LanBroker), its backend chosen by `broker.backend`.

Backends hand what devices publish, and their presence, to a BrokerSink. Each backend lives in its own
subpackage and is imported only when chosen, so an unused one costs no memory and needs no library:

    embedded   gateway/broker/amqtt/       the amqtt broker inside the daemon (the default)
    mosquitto  gateway/broker/mosquitto/   Debian's Mosquitto as a supervised child, the gateway its client
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gateway.core.metrics import Metrics
from gateway.core.ports import BrokerSink, LanBroker
from gateway.settings import DeviceSettings
from gateway.settings_broker import BrokerSection


def device_logins(devices: Iterable[DeviceSettings], backend: str = "embedded") -> dict[str, str | None]:
    """Device id -> password hash (None: no password), what `backend` checks a login against: argon2 for the
    embedded broker, Mosquitto's PBKDF2 for Mosquitto."""
    if backend == "mosquitto":
        return {d.id: d.password_hash_mosquitto for d in devices}
    return {d.id: d.password_hash for d in devices}


def create_lan_broker(
    settings: BrokerSection, devices: Iterable[DeviceSettings], *, sink: BrokerSink, metrics: Metrics,
    state_dir: Path,
) -> LanBroker:
    """The backend `settings.backend` names, built (not started) with the configured devices; a backend that
    keeps files (Mosquitto's config and sessions) keeps them under `state_dir`."""
    if settings.backend == "embedded":
        from gateway.broker.amqtt.embedded import EmbeddedBroker

        return EmbeddedBroker(settings, device_logins(devices), sink=sink, metrics=metrics)
    if settings.backend == "mosquitto":
        from gateway.broker.mosquitto.backend import MosquittoBroker

        return MosquittoBroker(settings, device_logins(devices, "mosquitto"), sink=sink, metrics=metrics,
                               state_dir=state_dir)
    raise ValueError(f"unknown broker backend {settings.backend!r}")  # config validation refuses it first
