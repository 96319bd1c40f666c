"""The LAN broker behind one port (gateway.core.ports.LanBroker), its backend chosen by `broker.backend`.

Backends hand what devices publish, and their presence, to a BrokerSink. Each backend lives in its own
subpackage and is imported only when chosen, so an unused one costs no memory and needs no library:

    embedded   gateway/broker/amqtt/   the amqtt broker inside the daemon (the default)
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.core.metrics import Metrics
from gateway.core.ports import BrokerSink, LanBroker
from gateway.settings import DeviceSettings
from gateway.settings_broker import BrokerSection


def device_logins(devices: Iterable[DeviceSettings]) -> dict[str, str | None]:
    """Device id -> argon2 password hash (None: no password), what a backend checks a login against."""
    return {d.id: d.password_hash for d in devices}


def create_lan_broker(
    settings: BrokerSection, devices: Iterable[DeviceSettings], *, sink: BrokerSink, metrics: Metrics
) -> LanBroker:
    """The backend `settings.backend` names, built (not started) with the configured devices."""
    if settings.backend == "embedded":
        from gateway.broker.amqtt.embedded import EmbeddedBroker

        return EmbeddedBroker(settings, device_logins(devices), sink=sink, metrics=metrics)
    raise ValueError(f"unknown broker backend {settings.backend!r}")  # config validation refuses it first
