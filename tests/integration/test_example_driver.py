"""A new device kind plugs in with one driver module, one registry line and config, nothing else.

`ThermoDriver` below is the whole driver of a made-up thermostat that speaks plain text on the LAN broker
("t=21.5;rh=40" readings, "OK <commandId>" acks, "<commandId> SET <speed>" commands). Registering it is the
"one registry line"; the test runs the real gateway (broker, ingest, store, control) unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import ClassVar

import aiomqtt
import pytest

from drivers import registry
from gateway.control.command_model import CommandError
from gateway.core.device_commands import Ack, DeviceCommand, OutgoingCommand, SetFanSpeed
from gateway.core.errors import PayloadError
from gateway.core.models import Reading
from gateway.core.registry import Change
from tests.fixtures.gateway import GatewayFactory, device_password, wait_for


class ThermoDriver:
    kind: ClassVar[str] = "thermo-text"
    transport: ClassVar[str] = "mqtt"

    def decode_reading(self, device_id: str, payload: bytes, received_at: float) -> Reading:
        try:
            pairs = dict(item.split("=", 1) for item in payload.decode().split(";"))
            metrics = {"temperature": float(pairs["t"]), "humidity": float(pairs["rh"])}
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise PayloadError(f"not a thermo reading: {exc}") from None
        return Reading(device_id, received_at, metrics, received_at)  # type: ignore[arg-type]

    def decode_ack(self, payload: bytes) -> Ack:
        word, _, command_id = payload.decode(errors="replace").partition(" ")
        if word not in ("OK", "ERR") or not command_id:
            raise PayloadError("ack must be 'OK <commandId>' or 'ERR <commandId>'")
        return Ack(command_id, word == "OK", None if word == "OK" else "refused", None)

    def encode_command(self, command: OutgoingCommand) -> bytes:
        assert isinstance(command.command, SetFanSpeed)
        return f"{command.command_id} SET {command.command.value}".encode()

    def check_command(self, command: DeviceCommand) -> None:
        if not isinstance(command, SetFanSpeed) or not 0 <= command.value <= 3:
            raise ValueError("a thermostat only takes setFanSpeed 0..3")


@pytest.fixture
def thermo_kind() -> Iterator[None]:
    registry.register(ThermoDriver.kind, ThermoDriver)  # the "one registry line"
    yield
    registry.unregister(ThermoDriver.kind)


@pytest.mark.usefixtures("thermo_kind")
async def test_a_new_kind_stores_readings_quarantines_bad_ones_and_takes_commands(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(devices=["TH-1"], kinds={"TH-1": ThermoDriver.kind}, api="enabled = false")
    async with aiomqtt.Client("127.0.0.1", gw.port, identifier="TH-1", username="TH-1",
                              password=device_password("TH-1")) as dev:
        await dev.subscribe("device/TH-1/command", qos=1)
        await wait_for(lambda: gw.gateway.links.command_ready("TH-1"))
        await dev.publish("device/TH-1/data", b"t=21.5;rh=40", qos=1)
        await dev.publish("device/TH-1/data", b"garbage", qos=1)
        await gw.flush()
        assert gw.query("SELECT device_id, metrics FROM readings") == [
            ("TH-1", json.dumps({"temperature": 21.5, "humidity": 40.0}, separators=(",", ":")))
        ]
        assert gw.query("SELECT reason FROM quarantine")[0][0].startswith("not a thermo reading")

        record = gw.gateway.controller.submit_command("TH-1", "setFanSpeed", 2, "api")
        async for message in dev.messages:
            assert message.payload == f"{record.command_id} SET 2".encode()
            await dev.publish("device/TH-1/ack", f"OK {record.command_id}".encode(), qos=1)
            break
        finished = await gw.gateway.controller.wait_finished(record.command_id, 5)
        assert finished.status.value == "acked"

    # The driver has the last word on what its device can do; control asks it before anything is queued.
    with pytest.raises(CommandError, match=r"setFanSpeed 0\.\.3"):
        gw.gateway.controller.submit_command("TH-1", "setFanSpeed", 5, "api")
    with pytest.raises(CommandError, match="fanSpeed"):
        await gw.gateway.controller.start_preclean("TH-1", 5, 10, "api")


async def test_a_sensor_takes_no_commands_and_desired_state_is_published_to_the_registry(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(devices=["AP-01", "S-1"], kinds={"S-1": "sensor"}, api="enabled = false")
    ctl = gw.gateway.controller
    with pytest.raises(CommandError, match="a sensor takes no commands"):
        ctl.submit_command("S-1", "turnOn", None, "api")
    changes: list[str | None] = []
    gw.gateway.registry.subscribe(lambda c: changes.append(c.device_id), Change.DESIRED)
    status = await ctl.start_preclean("AP-01", 4, 10, "api")
    assert gw.gateway.registry.desired("AP-01") == {
        "powerOn": True, "fanSpeed": 4, "layer": "preclean", "expiresAt": status.ends_at,
    }
    assert changes == ["AP-01"]
