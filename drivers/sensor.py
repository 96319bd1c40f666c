"""A generic MQTT sensor: readings only in the `{"ts", "metrics"}` form, no commands."""

from __future__ import annotations

from typing import ClassVar

from drivers import mqtt_json
from gateway.core.device_commands import Ack, DeviceCommand, OutgoingCommand
from gateway.core.errors import PayloadError
from gateway.core.models import Reading


class SensorDriver:
    kind: ClassVar[str] = "sensor"
    transport: ClassVar[str] = "mqtt"

    def decode_reading(self, device_id: str, payload: bytes, received_at: float) -> Reading:
        obj = mqtt_json.parse_object(payload)
        if "metrics" not in obj:
            raise PayloadError('a sensor payload must carry a "metrics" object')
        return mqtt_json.decode_generic_reading(device_id, obj, received_at)

    def decode_ack(self, payload: bytes) -> Ack:
        return mqtt_json.decode_ack(payload)

    def encode_command(self, command: OutgoingCommand) -> bytes:
        raise ValueError("a sensor takes no commands")

    def check_command(self, command: DeviceCommand) -> None:
        raise ValueError(f"a sensor takes no commands ({command.action})")
