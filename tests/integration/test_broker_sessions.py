"""Client ids, sessions and connections on the embedded broker (real TCP, real MQTT clients).

amqtt 0.12 looks up the session of a CONNECT's client id (and reuses it, wipes it, or kicks the client
connected with it) before it checks the password, and reuses one Session object for every connection
of a persistent session. These tests pin what GuardedBroker makes of that: nobody touches a session
without the credentials of the device it belongs to, and each connection keeps its own bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
import tracemalloc

import aiomqtt
import pytest
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import IncomingApplicationMessage, Session

from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, wait_for
from tests.fixtures.markers import messages_until_marker
from tests.fixtures.mqtt_packets import read_packet

COMMAND = b'{"commandId": "c-1", "action": "turnOff", "value": null}'
COMMAND_TOPIC = "device/AP-01/command"


def reading(**metrics: object) -> bytes:
    body: dict[str, object] = {"timestamp": int(time.time() * 1000), "pm25": 7.9, "fanSpeed": 2, "powerOn": True}
    body.update(metrics)
    return json.dumps(body).encode()


def aio_client(
    gw: RunningGateway, client_id: str, *, username: str | None = None, password: str | None = None, **kw: object
) -> aiomqtt.Client:
    username = client_id if username is None else username
    return aiomqtt.Client(
        "127.0.0.1", gw.port, identifier=client_id, username=username,
        password=device_password(username) if password is None else password,
        **kw,  # type: ignore[arg-type]
    )


def readings(gw: RunningGateway, device_id: str) -> int:
    return int(gw.query("SELECT count(*) FROM readings WHERE device_id = ?", (device_id,))[0][0])


def online(gw: RunningGateway, device_id: str) -> bool:
    state = gw.gateway.registry.get(device_id)
    return state is not None and bool(state.online)


# --- raw MQTT 3.1.1, for connections the tests must control byte by byte (or drop without a goodbye) ----

def _str(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _frame(first: int, body: bytes) -> bytes:
    length, n = bytearray(), len(body)
    while True:
        n, byte = divmod(n, 128)
        length.append(byte | 0x80 if n else byte)
        if not n:
            return bytes([first]) + bytes(length) + body


def connect_packet(
    client_id: str,
    username: str | None,
    password: str | None,
    *,
    clean: bool,
    will: tuple[str, bytes, int, bool] | None = None,
    keepalive: int = 60,
) -> bytes:
    flags, payload = (0x02 if clean else 0), _str(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _str(topic) + len(message).to_bytes(2, "big") + message
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    return _frame(0x10, _str("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + payload)


def publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    return _frame(0x32, _str(topic) + packet_id.to_bytes(2, "big") + payload)  # QoS 1


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connack: bytes) -> None:
        self.reader, self.writer, self.connack = reader, writer, connack

    @property
    def return_code(self) -> int:
        return self.connack[3]

    async def publish_qos1(self, topic: str, payload: bytes, packet_id: int) -> None:
        self.writer.write(publish_packet(topic, payload, packet_id))
        puback = await asyncio.wait_for(self.reader.readexactly(4), 5)
        assert puback == b"\x40\x02" + packet_id.to_bytes(2, "big"), puback

    def reset(self) -> None:
        """Drop the connection as a device losing power mid-session would: RST, no DISCONNECT."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.close()


async def raw_connect(port: int, client_id: str, username: str | None, password: str | None, **kw: object) -> RawClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet(client_id, username, password, **kw))  # type: ignore[arg-type]
    connack = await asyncio.wait_for(reader.readexactly(4), 5)
    assert connack[:2] == b"\x20\x02", connack
    return RawClient(reader, writer, connack)


async def closed_by_broker(raw: RawClient, timeout: float = 5) -> bool:
    try:
        return await asyncio.wait_for(raw.reader.read(1), timeout) == b""
    except ConnectionError:
        return True


# --- 1. nobody takes over a session without the credentials of its device ---------------------------------

@pytest.mark.parametrize("clean_session", [False, True], ids=["persistent", "clean"])
async def test_wrong_password_with_a_connected_devices_client_id_leaves_that_device_alone(
    gateway: RunningGateway, clean_session: bool
) -> None:
    broker = gateway.gateway.broker
    async with asyncio.timeout(20), aio_client(gateway, "AP-01", clean_session=clean_session) as victim:
        await victim.subscribe("device/AP-01/command", qos=1)
        await victim.publish("device/AP-01/data", reading(pm25=1.0), qos=1)
        await wait_for(lambda: readings(gateway, "AP-01") == 1)

        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with aio_client(gateway, "AP-01", password="wrong", clean_session=clean_session):
                pass
        assert refused.value.rc in (5, 135)  # not authorized (paho reports the MQTT 5 equivalent)

        # The victim is still connected, still subscribed, and still publishes under its identity.
        await broker.send("AP-01", COMMAND)
        assert await messages_until_marker(victim, gateway, "AP-01") == [(COMMAND_TOPIC, COMMAND)]
        await victim.publish("device/AP-01/data", reading(pm25=2.0), qos=1)
        await wait_for(lambda: readings(gateway, "AP-01") == 2)
        assert online(gateway, "AP-01")
    assert gateway.counter("gateway_broker_logins_refused_total", reason="bad-password") == 1  # once, not twice


@pytest.mark.parametrize("clean_session", [False, True], ids=["persistent", "clean"])
async def test_valid_credentials_of_one_device_cannot_take_over_another_devices_client_id(
    gateway: RunningGateway, clean_session: bool
) -> None:
    broker = gateway.amqtt
    will = aiomqtt.Will("device/AP-02/status", b"online", qos=1, retain=True)
    async with asyncio.timeout(20), aio_client(gateway, "AP-01", clean_session=clean_session) as victim:
        await victim.subscribe("device/AP-01/command", qos=1)
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with aio_client(gateway, "AP-01", username="AP-02", clean_session=clean_session, will=will):
                pass
        assert refused.value.rc in (5, 135)
        await gateway.gateway.broker.send("AP-01", COMMAND)
        assert await messages_until_marker(victim, gateway, "AP-01") == [(COMMAND_TOPIC, COMMAND)]
        session, _ = broker.sessions["AP-01"]
        assert (session.username, session.will_flag) == ("AP-01", False)  # nothing of AP-02's CONNECT got in
    assert gateway.counter("gateway_broker_logins_refused_total", reason="client-id-of-another-device") == 1
    assert not online(gateway, "AP-02")


@pytest.mark.parametrize(
    ("client_id", "username", "password", "reason"),
    [
        ("AP-01", "AP-01", "wrong", "bad-password"),
        ("AP-01", "intruder", "whatever", "unknown-device"),
        ("AP-01", "AP-01", None, "no-password"),
        ("AP-01", "AP-02", "pw-AP-02", "client-id-of-another-device"),
        ("AP-02-backup", "AP-02", "pw-AP-02", "client-id-not-username"),
        ("AP-01", None, None, "anonymous"),
    ],
)
async def test_refused_connack_codes_and_nothing_left_behind(
    gateway: RunningGateway, client_id: str, username: str | None, password: str | None, reason: str
) -> None:
    """Every refusal is CONNACK 5 "not authorized", whatever the reason: the code tells no device ids apart."""
    broker = gateway.amqtt
    raw = await raw_connect(gateway.port, client_id, username, password, clean=False)
    try:
        assert raw.connack == b"\x20\x02\x00\x05"  # session present 0, not authorized
        assert await closed_by_broker(raw)
    finally:
        raw.close()
    assert gateway.counter("gateway_broker_logins_refused_total", reason=reason) == 1
    assert client_id not in broker.sessions
    await wait_for(lambda: broker.client_sessions_running == 0)
    assert broker.device_connections == 0


# --- 2. a reconnection keeps its own identity, publish intake and count (amqtt reuses a persistent Session) ---------

@pytest.mark.parametrize(
    ("clean_session", "old_connection"),
    [(False, "still-open"), (False, "reset"), (True, "still-open")],
    ids=["persistent-takeover", "persistent-after-reset", "clean-takeover"],
)
async def test_reconnect_keeps_the_new_connection_working(
    gateway: RunningGateway, clean_session: bool, old_connection: str
) -> None:
    """A "still-open" old connection: the device lost power without a TCP close, and is back first."""
    broker = gateway.amqtt
    old = await raw_connect(gateway.port, "AP-01", "AP-01", device_password("AP-01"), clean=clean_session)
    try:
        assert old.return_code == 0
        await old.publish_qos1("device/AP-01/data", reading(pm25=0.0), packet_id=1)
        await wait_for(lambda: readings(gateway, "AP-01") == 1 and online(gateway, "AP-01"))
        if old_connection == "reset":
            old.reset()  # the device lost power and comes straight back

        async with asyncio.timeout(20), aio_client(gateway, "AP-01", clean_session=clean_session) as new:
            if old_connection == "still-open":
                assert await closed_by_broker(old)  # taken over: the broker ends the old connection
            await wait_for(lambda: broker.client_sessions_running == 1)  # the old connection's cleanup has run
            for i in range(1, 6):
                await new.publish("device/AP-01/data", reading(pm25=float(i)), qos=1)
            await wait_for(lambda: readings(gateway, "AP-01") == 6)
            assert gateway.counter("gateway_broker_acl_denied_total", action="publish") == 0
            assert online(gateway, "AP-01")
            await gateway.flush()
            assert gateway.query("SELECT online FROM device_state WHERE device_id = 'AP-01'") == [(1,)]
            # ...and it still receives its commands (amqtt's takeover left the session marked disconnected).
            await new.subscribe("device/AP-01/command", qos=1)
            await gateway.gateway.broker.send("AP-01", COMMAND)
            assert await messages_until_marker(new, gateway, "AP-01") == [(COMMAND_TOPIC, COMMAND)]
    finally:
        old.close()
    # The connection count was right: with the last connection gone, the device is offline.
    await wait_for(lambda: not online(gateway, "AP-01"))
    assert broker.device_connections == 0
    await gateway.flush()
    events = [e for (e,) in gateway.query("SELECT type FROM events WHERE device_id = 'AP-01' ORDER BY id")]
    if old_connection == "still-open":
        assert events == ["device.online", "device.offline"]  # a takeover is no offline moment
    else:  # the broker may have seen the reset before the new login: then the device was offline meanwhile
        assert events in (["device.online", "device.offline"] * 2, ["device.online", "device.offline"])


async def test_reconnect_after_an_orderly_close_with_a_persistent_session(gateway: RunningGateway) -> None:
    for round_ in range(3):
        async with asyncio.timeout(20), aio_client(gateway, "AP-01", clean_session=False) as client:
            await client.publish("device/AP-01/data", reading(pm25=float(round_)), qos=1)
            await wait_for(lambda: readings(gateway, "AP-01") == round_ + 1)  # noqa: B023 - awaited here
            assert online(gateway, "AP-01")
        await wait_for(lambda: not online(gateway, "AP-01"))
    assert gateway.amqtt.device_connections == 0


# --- 3. at shutdown, leftovers are delivered only under an identity that logged in --------------------------------

async def test_shutdown_delivers_nothing_from_a_session_that_never_logged_in(gateway: RunningGateway) -> None:
    """A session amqtt holds without a verified login (here planted directly) claims a device in its username."""
    broker = gateway.amqtt
    session = Session()
    session.client_id = session.username = "AP-01"
    session.delivered_message_queue.put_nowait(
        IncomingApplicationMessage(1, "device/AP-01/data", 1, reading(pm25=66.0), False)
    )
    broker.sessions["AP-01"] = (session, BrokerProtocolHandler(broker.plugins_manager))
    await gateway.stop()
    assert gateway.counter("gateway_broker_leftovers_delivered_total") == 0
    assert readings(gateway, "AP-01") == 0


async def test_shutdown_under_load_stores_everything_acknowledged(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(storage="queue_size = 10\nmax_batch = 5")  # a slow store: amqtt's queue fills up
    dev = await raw_connect(gw.port, "AP-01", "AP-01", device_password("AP-01"), clean=False)
    assert dev.return_code == 0
    dev.writer.write(b"".join(
        publish_packet("device/AP-01/data", reading(pm25=float(i)), packet_id=i + 1) for i in range(400)
    ))
    acks = 0

    async def count_acks() -> None:
        nonlocal acks
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                if (await dev.reader.readexactly(4))[0] == 0x40:
                    acks += 1

    counter = asyncio.create_task(count_acks())
    await wait_for(lambda: acks >= 50)
    await gw.stop()
    await asyncio.wait_for(counter, 5)
    dev.close()
    assert acks > 0
    assert readings(gw, "AP-01") >= acks, f"{acks} acknowledged, {readings(gw, 'AP-01')} stored"


# --- 4. a Will cannot plant a retained message outside the device's topics; anonymous is not a bypass ----------

async def test_retained_will_on_another_devices_command_topic_is_dropped(gateway: RunningGateway) -> None:
    broker = gateway.amqtt
    forged = b'{"commandId": "evil", "action": "turnOff", "value": null}'
    planter = await raw_connect(
        gateway.port, "AP-01", "AP-01", device_password("AP-01"), clean=True,
        will=("device/AP-02/command", forged, 1, True),
    )
    assert planter.return_code == 0
    # and, for contrast, a Will on its own status topic, which must still work
    honest = await raw_connect(
        gateway.port, "AP-02", "AP-02", device_password("AP-02"), clean=True,
        will=("device/AP-02/status", b"offline", 1, True),
    )
    assert honest.return_code == 0
    await wait_for(lambda: online(gateway, "AP-01") and online(gateway, "AP-02"))
    planter.reset()
    honest.reset()
    await wait_for(lambda: not online(gateway, "AP-01") and not online(gateway, "AP-02"))
    await wait_for(lambda: broker.client_sessions_running == 0)

    assert "device/AP-02/command" not in broker.retained_messages
    assert broker.retained_messages["device/AP-02/status"].data == b"offline"
    assert gateway.counter("gateway_broker_acl_denied_total", action="retain") == 1
    async with asyncio.timeout(20), aio_client(gateway, "AP-02") as victim:
        await victim.subscribe("device/AP-02/command", qos=1)
        assert await messages_until_marker(victim, gateway, "AP-02") == []


async def test_anonymous_mode_does_not_bypass_a_configured_password(gateway_factory: GatewayFactory) -> None:
    # AP-01 and AP-02 have a password hash; SENSOR-9 has none, so only it may log in anonymously.
    gw = await gateway_factory(allow_anonymous=True, extra='[[devices]]\nid = "SENSOR-9"\nkind = "purifier"\n')
    sensor = await raw_connect(gw.port, "SENSOR-9", None, None, clean=True)
    try:
        assert sensor.return_code == 0
        await sensor.publish_qos1("device/SENSOR-9/data", reading(pm25=9.0), packet_id=1)
        await wait_for(lambda: readings(gw, "SENSOR-9") == 1)
    finally:
        sensor.close()
    for client_id in ("AP-01", "AP-02"):
        raw = await raw_connect(gw.port, client_id, None, None, clean=True)
        try:
            assert raw.return_code == 5
        finally:
            raw.close()
    with pytest.raises(aiomqtt.MqttCodeError):
        async with aiomqtt.Client("127.0.0.1", gw.port, identifier="AP-01"):
            pass
    # a username with no password is no way around it either
    raw = await raw_connect(gw.port, "AP-01", "AP-01", None, clean=True)
    raw.close()
    assert raw.return_code == 5
    assert gw.counter("gateway_broker_logins_refused_total", reason="anonymous") == 3
    assert gw.counter("gateway_broker_logins_refused_total", reason="no-password") == 1
    assert not online(gw, "AP-01")
    assert readings(gw, "AP-01") == 0
    await wait_for(lambda: gw.amqtt.device_connections == 0)


# --- 5. a PUBLISH to a topic no client may publish to ends the connection ----------------------------------

@pytest.mark.parametrize("topic", ["device/AP-01/+", "device/AP-01/#", "$SYS/broker/uptime", ""])
async def test_publish_to_an_invalid_topic_closes_the_connection(gateway: RunningGateway, topic: str) -> None:
    """[MQTT-3.3.2-2], [MQTT-4.7.2-1], [MQTT-4.7.3-1]. amqtt only stopped delivering: the connection stayed up,
    its messages were read, acknowledged and never stored, and the device was shown offline while connected."""
    will = ("device/AP-01/status", b'{"online": false}', 1, False)
    raw = await raw_connect(gateway.port, "AP-01", "AP-01", device_password("AP-01"), clean=True, will=will)
    try:
        assert raw.return_code == 0
        await raw.publish_qos1("device/AP-01/data", reading(pm25=1.0), packet_id=1)
        raw.writer.write(publish_packet(topic, reading(pm25=2.0), 2) + publish_packet("device/AP-01/data",
                                                                                      reading(pm25=3.0), 3))
        assert await closed_by_broker(raw)
    finally:
        raw.close()
    assert gateway.counter("gateway_broker_protocol_errors_total") == 1
    await wait_for(lambda: not online(gateway, "AP-01"))
    await gateway.flush()
    assert readings(gateway, "AP-01") == 1  # nothing after the violation was taken
    assert gateway.amqtt.device_connections == 0


async def test_qos2_publish_to_a_dollar_topic_closes_the_connection(gateway: RunningGateway) -> None:
    """QoS 2 keeps amqtt's queue and client loop: the same rule holds there, and the connection ends as any
    abnormal one does (a first fix only aborted it: no Will, and a persistent session left "connected")."""
    will = ("device/AP-01/data", reading(pm25=42.0), 1, False)  # a Will we can count as a stored reading
    raw = await raw_connect(gateway.port, "AP-01", "AP-01", device_password("AP-01"), clean=False, will=will)
    try:
        assert raw.return_code == 0
        raw.writer.write(_frame(0x34, _str("$SYS/x") + (7).to_bytes(2, "big") + reading(pm25=2.0)))  # QoS 2
        assert await asyncio.wait_for(raw.reader.readexactly(4), 5) == b"\x50\x02\x00\x07"  # PUBREC
        raw.writer.write(b"\x62\x02\x00\x07")  # PUBREL: amqtt delivers the message now
        rest = await asyncio.wait_for(raw.reader.read(), 5)  # to EOF: the broker closed the connection
        assert rest in (b"", b"\x70\x02\x00\x07")  # (its PUBCOMP may come first)
    finally:
        raw.close()
    assert gateway.counter("gateway_broker_protocol_errors_total") == 1
    broker = gateway.amqtt
    await wait_for(lambda: broker.device_connections == 0)
    await wait_for(lambda: not broker.sessions["AP-01"][0].transitions.is_connected())
    await gateway.flush()
    assert readings(gateway, "AP-01") == 1  # the Will: nothing of the forbidden publish


# --- 6. the client loop (ours: no waiter tasks) serves SUBSCRIBE, UNSUBSCRIBE and QoS 2 ---------------------------

async def test_qos2_readings_are_completed_and_stored(gateway: RunningGateway) -> None:
    async with aio_client(gateway, "AP-01") as c:
        for pm25 in (1.0, 2.0, 3.0):
            await c.publish("device/AP-01/data", reading(pm25=pm25), qos=2)  # returns on PUBCOMP
    await gateway.flush()
    assert readings(gateway, "AP-01") == 3


async def test_unsubscribe_is_acknowledged_and_ends_delivery(gateway: RunningGateway) -> None:
    broker = gateway.gateway.broker
    async with aio_client(gateway, "AP-01") as c, aio_client(gateway, "AP-02") as witness:
        await witness.subscribe("device/AP-02/command", qos=1)
        await c.subscribe("device/AP-01/command", qos=1)  # returns on SUBACK
        assert broker.command_ready("AP-01")
        await c.unsubscribe("device/AP-01/command")  # returns on UNSUBACK
        assert not broker.command_ready("AP-01")
        await broker.send("AP-01", COMMAND)  # to nobody
        # The broker routes what is sent one message after the other: once AP-02 has a marker sent after
        # that command, the command was routed (while AP-01 was not subscribed).
        assert await messages_until_marker(witness, gateway, "AP-02") == []
        await c.subscribe("device/AP-01/command", qos=1)  # and again: the loop still serves this connection
        await broker.send("AP-01", COMMAND)
        # one command: the one sent while unsubscribed never came (it would be first, on this connection)
        assert await messages_until_marker(c, gateway, "AP-01") == [(COMMAND_TOPIC, COMMAND)]


async def test_a_connection_costs_two_tasks_and_little_memory(gateway_factory: GatewayFactory) -> None:
    """amqtt 0.12 runs four waiter tasks per connection and gives it four Queues and three Events whose
    waiter deques cost ~12 KB idle: ~35 KB a connection, 3.5 MB for 100 purifiers (the gateway should stay
    under 60 MB). Measured on raw connections, which make no tasks of their own."""
    devices = [f"AP-{i:02d}" for i in range(1, 23)]
    gw = await gateway_factory(devices=devices)
    clients = [await raw_connect(gw.port, d, d, device_password(d), clean=True) for d in devices[:2]]  # one-off costs
    tasks_before = len(asyncio.all_tasks())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        clients += [await raw_connect(gw.port, d, d, device_password(d), clean=True) for d in devices[2:]]
        await asyncio.sleep(0.2)  # every client loop is waiting
        per_connection = (tracemalloc.get_traced_memory()[0] - before) / 20
    finally:
        tracemalloc.stop()
        tasks_after = len(asyncio.all_tasks())
        for raw in clients:
            raw.close()
    assert tasks_after - tasks_before <= 2 * 20  # the connection's own task and its reader
    assert per_connection < 30_000  # bytes, both ends' streams included (was ~42,000; now ~25,000)


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    return await asyncio.wait_for(read_packet(reader), 5)


async def test_a_qos2_reading_completed_on_a_resumed_session_is_stored_at_once(gateway: RunningGateway) -> None:
    """amqtt completes a QoS 2 message left half-done by the last connection inside handler.start(), before
    the client loop runs: the first version of our loop slept on it until the device went away."""
    password = device_password("AP-01")
    raw = await raw_connect(gateway.port, "AP-01", "AP-01", password, clean=False)
    raw.writer.write(_frame(0x34, _str("device/AP-01/data") + (9).to_bytes(2, "big") + reading(pm25=5.0)))
    assert await asyncio.wait_for(raw.reader.readexactly(4), 5) == b"\x50\x02\x00\x09"  # PUBREC
    raw.close()  # gone before its PUBREL
    broker = gateway.amqtt
    await wait_for(lambda: broker.device_connections == 0)
    raw = await raw_connect(gateway.port, "AP-01", "AP-01", password, clean=False)
    try:
        assert raw.connack[2] == 1  # session present
        assert await asyncio.wait_for(raw.reader.readexactly(4), 5) == b"\x50\x02\x00\x09"  # PUBREC again
        raw.writer.write(b"\x62\x02\x00\x09")  # PUBREL
        assert await asyncio.wait_for(raw.reader.readexactly(4), 5) == b"\x70\x02\x00\x09"  # PUBCOMP
        for _ in range(30):
            await gateway.flush()
            if readings(gateway, "AP-01"):
                break
            await asyncio.sleep(0.1)
        assert readings(gateway, "AP-01") == 1  # stored while the device is still connected
    finally:
        raw.close()


async def test_subscribe_and_unsubscribe_take_effect_in_the_order_sent(gateway: RunningGateway) -> None:
    """UNSUBSCRIBE then SUBSCRIBE of one topic, sent while the client loop is busy (here: replaying a retained
    command that waits for its PUBACK), must leave the device subscribed."""
    broker = gateway.amqtt
    topic = "device/AP-01/command"
    await broker.retain_message(None, topic, COMMAND, 1)
    raw = await raw_connect(gateway.port, "AP-01", "AP-01", device_password("AP-01"), clean=True)
    try:
        raw.writer.write(_frame(0x82, (1).to_bytes(2, "big") + _str(topic) + b"\x01"))  # SUBSCRIBE 1
        assert await _read_packet(raw.reader) == (0x90, b"\x00\x01\x01")  # SUBACK
        kind, body = await _read_packet(raw.reader)  # the retained command, QoS 1: its PUBACK is held back
        assert kind & 0xF0 == 0x30
        retained_id = body[2 + int.from_bytes(body[:2], "big"):][:2]
        raw.writer.write(_frame(0xA2, (2).to_bytes(2, "big") + _str(topic)))  # UNSUBSCRIBE 2
        raw.writer.write(_frame(0x82, (3).to_bytes(2, "big") + _str(topic) + b"\x01"))  # SUBSCRIBE 3
        await asyncio.sleep(0.3)  # both read and queued while the loop waits for that PUBACK
        raw.writer.write(b"\x40\x02" + retained_id)
        assert await _read_packet(raw.reader) == (0xB0, b"\x00\x02")  # UNSUBACK first...
        assert await _read_packet(raw.reader) == (0x90, b"\x00\x03\x01")  # ...then SUBACK
        await wait_for(lambda: gateway.gateway.broker.command_ready("AP-01"))
    finally:
        raw.close()
