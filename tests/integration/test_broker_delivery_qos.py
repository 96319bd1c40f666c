"""A message reaches a subscriber at the lower of its own QoS and the subscription's (MQTT 3.1.1, 3.8.4).

Real clients (paho-mqtt through aiomqtt) on the embedded broker; the ACL opened (broker.acl = "open") so
that two clients can publish and subscribe to the same topics, as in the Paho interoperability tests.
"""

from __future__ import annotations

import asyncio
import functools

import aiomqtt

from gateway.core.topics import command_topic
from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, wait_for
from tests.integration.test_paho_interop import raw

PUBLISHER, SUBSCRIBER = "myclientid", "myclientid2"
_CLIENTS = "".join(f'[[devices]]\nid = "{cid}"\nkind = "purifier"\n' for cid in (PUBLISHER, SUBSCRIBER))


async def open_gateway(gateway_factory: GatewayFactory) -> RunningGateway:
    return await gateway_factory(api="enabled = false", allow_anonymous=True, extra=_CLIENTS,
                                 extra_broker='acl = "open"')


def client(gw: RunningGateway, cid: str, **options: object) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", gw.port, identifier=cid, **options)  # type: ignore[arg-type]


async def receive(c: aiomqtt.Client, count: int) -> list[aiomqtt.Message]:
    got: list[aiomqtt.Message] = []
    async with asyncio.timeout(10):
        async for message in c.messages:
            got.append(message)
            if len(got) == count:
                break
    return got


async def test_a_message_is_delivered_at_the_lower_of_its_qos_and_the_subscription_qos(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await open_gateway(gateway_factory)
    async with client(gw, SUBSCRIBER) as sub, client(gw, PUBLISHER) as pub:
        for granted in (0, 1, 2):
            await sub.subscribe(f"qos/{granted}", qos=granted)
        for granted in (0, 1, 2):
            for published in (0, 1, 2):
                await pub.publish(f"qos/{granted}", str(published).encode(), qos=published)
        delivered = {(str(m.topic), int(m.payload)): m.qos for m in await receive(sub, 9)}  # type: ignore[arg-type]
    assert delivered == {(f"qos/{g}", p): min(g, p) for g in (0, 1, 2) for p in (0, 1, 2)}


async def test_a_will_is_delivered_at_the_lower_of_its_qos_and_the_subscription_qos(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await open_gateway(gateway_factory)
    async with client(gw, SUBSCRIBER) as sub:
        await sub.subscribe("wills/#", qos=0)
        async with raw(gw, PUBLISHER, will=("wills/x", b"gone")):  # a Will of QoS 1
            pass  # the socket closes without a DISCONNECT: the Will is published
        [will] = await receive(sub, 1)
    assert (str(will.topic), will.payload, will.qos) == ("wills/x", b"gone", 0)


async def test_a_command_reaches_a_device_at_qos_1_or_at_the_qos_it_subscribed_with(
    gateway_factory: GatewayFactory,
) -> None:
    """Commands are published at QoS 1 (the device acknowledges them; unacknowledged ones are sent again)."""
    gw = await gateway_factory(api="enabled = false")
    broker = gw.gateway.broker
    for device_id, granted in (("AP-01", 1), ("AP-02", 0)):
        async with aiomqtt.Client("127.0.0.1", gw.port, identifier=device_id, username=device_id,
                                  password=device_password(device_id)) as device:
            await device.subscribe(command_topic(device_id), qos=granted)
            await wait_for(functools.partial(broker.command_ready, device_id))
            await broker.send(device_id, b'{"action":"turnOff"}')
            [command] = await receive(device, 1)
            assert command.qos == granted
