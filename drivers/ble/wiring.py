"""What the composition root calls for `[ble]`: the advert decoders, and the link when the gateway's own radio
is used (bleak is imported only then)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from drivers.ble.hub_adverts import BleAdvertDecoder
from gateway.core.clock import Clock
from gateway.core.links import DeviceIntake
from gateway.core.metrics import Metrics
from gateway.core.supervisor import Supervisor

if TYPE_CHECKING:
    from drivers.ble.link import BleBackends, BleLink, BleSectionConfig


def build_ble(section: BleSectionConfig, *, radio: bool, intake: DeviceIntake, clock: Clock, metrics: Metrics,
              supervisor: Supervisor, backends: BleBackends | None) -> tuple[BleAdvertDecoder, BleLink | None]:
    """One BleAdvertDecoder, for the scanner and the hub demultiplexer alike (so a beacon heard both ways is
    stored once), and the BLE link (None when `radio` is off: the devices are heard only through hubs)."""
    decoder = BleAdvertDecoder(section.devices)
    if not radio:
        return decoder, None
    from drivers.ble.link import build_ble_link

    return decoder, build_ble_link(section, intake=intake, clock=clock, metrics=metrics, supervisor=supervisor,
                                   backends=backends, decoder=decoder)
