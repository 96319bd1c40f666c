"""The `[hubs]` section of the config: how hub batches are reassembled (CONTRACT section 3) and which
configured device each hub's logical devices are.

```toml
[hubs]
batch_timeout_seconds = 60       # an incomplete batch is quarantined this long after its first part
max_open_batches = 8             # per hub; one more gives up the hub's oldest open batch
max_bytes_held = 1048576         # per hub: bytes of parts held in open batches (in SQLite, not in memory)
offline_after_seconds = 300      # a relayed logical device goes offline after this long unheard

[[hubs.mappings]]
hub = "HUB-1"                                   # a configured device of kind "hub"
devices = { "beacon-a1" = "T-1" }               # the hub's name of a logical device -> configured device id
macs = { "C4:7C:8D:6A:01:02" = "T-2" }          # a relayed advertiser's MAC -> configured device id
```

A relayed advertisement (`mac` + `adv`) is decoded by the BLE decoders, which know each configured MAC's
format and key; `macs` names the device its readings belong to when that is not the decoders' own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

HUB_KIND = "hub"
# Kept in step with settings.DEVICE_ID_PATTERN (not imported: settings imports this module).
_DEVICE_ID = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
_MAC = Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")]
_NAME = Annotated[str, Field(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubMapping(_Strict):
    hub: _DEVICE_ID
    devices: dict[_NAME, _DEVICE_ID] = Field(default_factory=dict)
    macs: dict[_MAC, _DEVICE_ID] = Field(default_factory=dict)  # matched whatever the case of its letters

    def targets(self) -> list[tuple[str, str]]:
        """(field path within the mapping, configured device id) of every mapping."""
        return [*((f"devices.{name}", d) for name, d in self.devices.items()),
                *((f"macs.{mac}", d) for mac, d in self.macs.items())]


class HubsSection(_Strict):
    batch_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_open_batches: Annotated[int, Field(ge=1, le=1000)] = 8
    # Parts of open batches a hub may make the gateway hold: in SQLite (memory keeps part numbers and sizes only),
    # until their batch closes.
    max_bytes_held: Annotated[int, Field(ge=64 * 1024, le=256 * 1024 * 1024)] = 1024 * 1024
    max_parts: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # A relayed logical device goes offline (event device.offline) after this long with nothing heard of it.
    offline_after_seconds: Annotated[float, Field(gt=0, le=7 * 86400)] = 300.0
    # Unmapped logical devices listed per hub (GET /api/hubs/{id}/unmapped); more are counted, not listed.
    max_unmapped_listed: Annotated[int, Field(ge=1, le=100_000)] = 256
    mappings: list[HubMapping] = Field(default_factory=list)

    def mapping(self, hub_id: str) -> HubMapping | None:
        for mapping in self.mappings:
            if mapping.hub == hub_id:
                return mapping
        return None

    def reached_through_hubs(self) -> set[str]:
        """Devices a hub speaks for: they need no password of their own (they never log in)."""
        return {device_id for m in self.mappings for _, device_id in m.targets()}

    def problems(self, kinds: Mapping[str, str]) -> list[tuple[str, str]]:
        """(field path, message) for mappings that name no hub or no configured device; `kinds`: device -> kind."""
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for index, mapping in enumerate(self.mappings):
            where = f"hubs.mappings.{index}[hub={mapping.hub}]"
            if mapping.hub in seen:
                out.append((f"{where}.hub", f"hub {mapping.hub!r} has more than one mapping"))
            seen.add(mapping.hub)
            if kinds.get(mapping.hub) != HUB_KIND:
                out.append((f"{where}.hub", f"{mapping.hub!r} is not a configured device of kind {HUB_KIND!r}"))
            for path, device_id in mapping.targets():
                kind = kinds.get(device_id)
                if kind is None:
                    out.append((f"{where}.{path}", f"{device_id!r} is not a configured device"))
                elif kind == HUB_KIND:
                    out.append((f"{where}.{path}", f"{device_id!r} is a hub, not a logical device"))
        return out
