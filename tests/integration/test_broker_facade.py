"""The LanBroker port, on the embedded backend: presence, command readiness and commands, and its choice in config."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from gateway.core.errors import ConfigError
from gateway.core.topics import command_topic, device_topic, parse_device_topic
from gateway.settings import load_settings
from tests.fixtures.gateway import RunningGateway, device_password, wait_for, write_config

COMMAND = b'{"action":"turnOff"}'


def device(gw: RunningGateway, device_id: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", gw.port, identifier=device_id, username=device_id, password=device_password(device_id)
    )


async def test_presence_command_readiness_and_a_command(gateway: RunningGateway) -> None:
    broker = gateway.gateway.broker
    assert (broker.clients_connected(), broker.command_ready("AP-01")) == (0, False)
    async with asyncio.timeout(20), device(gateway, "AP-01") as ap01:
        assert broker.clients_connected() == 1
        assert not broker.command_ready("AP-01")  # connected, not subscribed yet
        await ap01.subscribe(command_topic("AP-01"), qos=1)  # returns on SUBACK
        assert broker.command_ready("AP-01")
        assert not broker.command_ready("AP-02")
        await broker.send("AP-01", COMMAND)
        async for message in ap01.messages:
            assert (str(message.topic), message.payload, message.qos) == (command_topic("AP-01"), COMMAND, 1)
            break
    await wait_for(lambda: broker.clients_connected() == 0)
    assert not broker.command_ready("AP-01")


def test_an_unknown_backend_fails_config_validation_with_its_path(tmp_path: Path) -> None:
    path = write_config(tmp_path, backend="nanomq")
    with pytest.raises(ConfigError) as failed:
        load_settings(path)
    assert any("broker.backend" in line for line in failed.value.errors), failed.value.errors


def test_the_embedded_backend_is_the_default(tmp_path: Path) -> None:
    assert load_settings(write_config(tmp_path)).settings.broker.backend == "embedded"


def test_device_topics_are_built_and_parsed_in_one_place() -> None:
    assert command_topic("AP-01") == device_topic("AP-01", "command") == "device/AP-01/command"
    assert parse_device_topic("device/AP-01/data") == ("AP-01", "data")
    for other in ("device/AP-01", "device/AP-01/data/x", "devices/AP-01/data", ""):
        assert parse_device_topic(other) is None
