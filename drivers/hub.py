"""A hub on the LAN broker (CONTRACT section 3): it relays the readings of many logical devices in chunked
batches on `device/{hubId}/batch`, and acknowledges nothing (it takes no commands).

Pure functions: the JSON of a part and of each of its readings. Reassembly, the mapping of logical devices
to configured ones and the BLE decoding are the demultiplexer's (gateway/ingest/hub_intake.py).
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from drivers import mqtt_json
from gateway.core.device_commands import Ack, DeviceCommand, OutgoingCommand
from gateway.core.errors import PayloadError
from gateway.core.hub_batches import AdvertEntry, BatchEntry, BatchPart, NamedEntry, RefusedEntry
from gateway.core.models import Reading
from gateway.core.timestamps import normalise_ts

MAX_BATCH_ID = 128  # characters
MAX_ADV_BYTES = 255  # an extended advertisement's data is at most 255 bytes (BLE 5); legacy ones 31
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}$")
_NAMES_A_DEVICE = 'a reading names its device by "device", or by "mac" and "adv"'


class HubDriver:
    kind: ClassVar[str] = "hub"
    transport: ClassVar[str] = "mqtt"

    def decode_reading(self, device_id: str, payload: bytes, received_at: float) -> Reading:
        raise PayloadError(f"a hub sends its readings as batches on device/{device_id}/batch")

    def decode_ack(self, payload: bytes) -> Ack:
        return mqtt_json.decode_ack(payload)

    def encode_command(self, command: OutgoingCommand) -> bytes:
        raise ValueError("a hub takes no commands")

    def check_command(self, command: DeviceCommand) -> None:
        raise ValueError(f"a hub takes no commands ({command.action})")

    # --- batches ----------------------------------------------------------------------------------

    def decode_part(self, payload: bytes) -> BatchPart:
        obj = mqtt_json.parse_object(payload)
        batch_id = obj.get("batchId")
        if not isinstance(batch_id, str) or not batch_id or len(batch_id) > MAX_BATCH_ID:
            raise PayloadError(f"batchId: expected a string of 1 to {MAX_BATCH_ID} characters, got {batch_id!r:.80}")
        parts = _whole(obj, "parts")
        part = _whole(obj, "part")
        if part > parts:
            raise PayloadError(f"part: {part} is beyond parts ({parts})")
        readings = obj.get("readings")
        if not isinstance(readings, list):
            raise PayloadError("readings: expected an array")
        return BatchPart(batch_id, part, parts, len(readings))

    def decode_entries(self, payload: bytes) -> list[BatchEntry]:
        # Checked by decode_part on arrival (UTF-8, numbers SQLite can store, no NaN): parsed again here by the
        # json module's C scanner alone, without the checking hooks that cost ~10x as much per number.
        try:
            readings = json.loads(payload)["readings"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise PayloadError(f"not a checked batch part: {exc}") from None
        return [_entry(i, item) for i, item in enumerate(readings)]

    def decode_named(self, device_id: str, entry: NamedEntry, received_at: float) -> Reading:
        if "metrics" not in entry.body:
            raise PayloadError('a reading named by "device" must carry a "metrics" object')
        reading = mqtt_json.decode_generic_reading(device_id, entry.body, received_at)
        reading.extra.pop("device", None)  # its name on the hub, not an unknown field
        return reading


def _whole(obj: dict[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PayloadError(f"{key}: expected a whole number >= 1, got {value!r:.40}")
    return value


def _entry(index: int, item: Any) -> BatchEntry:
    if not isinstance(item, dict):
        return RefusedEntry(f"readings[{index}]: expected an object", item)
    name = item.get("device")
    if name is not None:
        if not isinstance(name, str) or not name:
            return RefusedEntry(f"readings[{index}].device: expected a non-empty string", item)
        return NamedEntry(name, item)
    mac, adv = item.get("mac"), item.get("adv")
    if mac is None or adv is None:
        return RefusedEntry(f"readings[{index}]: {_NAMES_A_DEVICE}", item)
    if not isinstance(mac, str) or not _MAC.match(mac):
        return RefusedEntry(f"readings[{index}].mac: expected AA:BB:CC:DD:EE:FF, got {mac!r:.40}", item)
    try:
        if not isinstance(adv, str) or len(adv) > 2 * MAX_ADV_BYTES:
            raise ValueError
        raw = bytes.fromhex(adv)
    except ValueError:
        return RefusedEntry(f"readings[{index}].adv: expected the advertisement as hex, at most {MAX_ADV_BYTES} "
                            "bytes", item)
    try:
        ts = normalise_ts(item["ts"], f"readings[{index}].ts") if "ts" in item else None
    except PayloadError as exc:
        return RefusedEntry(str(exc), item)
    rssi = item.get("rssi")
    if rssi is not None and (isinstance(rssi, bool) or not isinstance(rssi, int) or not -127 <= rssi <= 20):
        return RefusedEntry(f"readings[{index}].rssi: expected a whole number of dBm (-127..20), got {rssi!r:.40}",
                            item)
    return AdvertEntry(mac.upper(), raw, ts, rssi, item)
