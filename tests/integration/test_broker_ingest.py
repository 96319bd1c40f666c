"""Devices -> LAN broker (real TCP, real MQTT clients) -> ingest -> rows in SQLite on disk.

Tests taking `lan_gateway` run against both backends (embedded amqtt, managed Mosquitto)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, wait_for


def reading(**metrics: object) -> bytes:
    body: dict[str, object] = {"timestamp": int(time.time() * 1000), "pm25": 7.9, "fanSpeed": 2, "powerOn": True}
    body.update(metrics)
    return json.dumps(body).encode()


def aio_client(gw: RunningGateway, device_id: str, password: str | None = None, **kw: object) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        gw.port,
        identifier=device_id,
        username=device_id,
        password=device_password(device_id) if password is None else password,
        **kw,  # type: ignore[arg-type]
    )


class PahoDevice:
    """A paho-mqtt client in its own network thread, as device firmware would use it."""

    def __init__(self, port: int, device_id: str, password: str) -> None:
        self.connack: list[int] = []
        self.connected = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.username_pw_set(device_id, password)
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: paho.Client, userdata: object, flags: object, rc: Any, props: object) -> None:
        self.connack.append(int(rc.value) if hasattr(rc, "value") else int(rc))
        self.connected.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_paho_and_aiomqtt_readings_land_in_sqlite(lan_gateway: RunningGateway) -> None:
    dev = PahoDevice(lan_gateway.port, "AP-01", device_password("AP-01"))
    try:
        assert await asyncio.to_thread(dev.connected.wait, 5)
        assert dev.connack == [0]
        infos = [dev.client.publish("device/AP-01/data", reading(pm25=float(i)), qos=1) for i in range(20)]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 5)
    finally:
        dev.close()
    async with aio_client(lan_gateway, "AP-02") as client:
        for i in range(20):
            await client.publish("device/AP-02/data", reading(pm25=100.0 + i), qos=1)
        await client.publish("device/AP-02/data", b'{"ts": 1763800000.5, "metrics": {"co2": 612, "ok": true}}', qos=0)

    await wait_for(lambda: lan_gateway.query("SELECT count(*) FROM readings")[0][0] == 41)
    per_device = dict(lan_gateway.query("SELECT device_id, count(*) FROM readings GROUP BY device_id"))
    assert per_device == {"AP-01": 20, "AP-02": 21}
    pm = [json.loads(m)["pm25"] for (m,) in lan_gateway.query(
        "SELECT metrics FROM readings WHERE device_id='AP-01' ORDER BY id")]
    assert pm == [float(i) for i in range(20)]  # order of arrival kept per device
    generic = lan_gateway.query("SELECT ts, metrics FROM readings WHERE metrics LIKE '%co2%'")
    assert generic == [(1763800000.5, '{"co2":612,"ok":true}')]
    state = lan_gateway.query("SELECT device_id, last_metrics FROM device_state ORDER BY device_id")
    assert json.loads(state[0][1])["pm25"] == 19.0


@pytest.mark.parametrize(
    ("client_id", "username", "password", "reason"),
    [
        ("AP-01", "AP-01", "wrong", "bad-password"),
        ("intruder", "intruder", "whatever", "unknown-device"),
        ("AP-01", "AP-01", "", "bad-password"),
        ("AP-02", "AP-01", "pw-AP-01", "client-id-of-another-device"),
    ],
)
async def test_bad_logins_are_refused_logged_and_counted(
    gateway: RunningGateway, client_id: str, username: str, password: str, reason: str
) -> None:
    client = aiomqtt.Client("127.0.0.1", gateway.port, identifier=client_id, username=username, password=password)
    with pytest.raises(aiomqtt.MqttCodeError) as err:
        async with client:
            pass
    assert "Not authorized" in str(err.value) or err.value.rc in (4, 5, 135)
    assert gateway.counter("gateway_broker_logins_refused_total", reason=reason) == 1
    # a refused client leaves no session behind that could later be taken over
    assert client_id not in gateway.amqtt.sessions


async def test_anonymous_login_refused_by_default(gateway: RunningGateway) -> None:
    with pytest.raises(aiomqtt.MqttCodeError):
        async with aiomqtt.Client("127.0.0.1", gateway.port, identifier="AP-01"):
            pass
    assert gateway.counter("gateway_broker_logins_refused_total", reason="anonymous") == 1


async def test_publishing_on_another_devices_topic_is_refused_and_nothing_stored(gateway: RunningGateway) -> None:
    async with aio_client(gateway, "AP-01") as client:
        await client.publish("device/AP-02/data", reading(), qos=1)
        await client.publish("somewhere/else", reading(), qos=1)
        await client.publish("device/AP-01/command", b'{"action": "turnOff"}', qos=1)
        await client.publish("device/AP-01/data", reading(pm25=1.0), qos=1)  # its own: accepted
    await wait_for(lambda: gateway.query("SELECT count(*) FROM readings")[0][0] == 1)
    await gateway.flush()
    assert gateway.query("SELECT device_id FROM readings") == [("AP-01",)]
    assert gateway.query("SELECT count(*) FROM quarantine") == [(0,)]
    assert gateway.counter("gateway_broker_acl_denied_total", action="publish") == 3


async def test_subscribing_to_another_devices_commands_is_refused(gateway: RunningGateway) -> None:
    async with aio_client(gateway, "AP-01") as client:
        own = await client.subscribe("device/AP-01/command", qos=1)
        other = await client.subscribe("device/AP-02/command", qos=1)
        wildcard = await client.subscribe("device/#", qos=1)
    assert [getattr(q, "value", q) for q in own] == [1]
    assert [getattr(q, "value", q) for q in other] == [128]
    assert [getattr(q, "value", q) for q in wildcard] == [128]


BAD_PAYLOADS = [
    (b"not json at all", "not JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (b"[1, 2, 3]", "not a JSON object (got array)"),
    (b'"online"', "not a JSON object (got string)"),
    (json.dumps({"pm25": "high"}).encode(), "pm25: expected a number, got str"),
    (json.dumps({"fanSpeed": 9}).encode(), "fanSpeed: 9 out of range 0..5"),
    (json.dumps({"fanSpeed": 2.5}).encode(), "fanSpeed: expected a whole number"),
    (json.dumps({"humidity": 120}).encode(), "humidity: 120 out of range 0..100"),
    (json.dumps({"pm10": -1}).encode(), "pm10: -1 out of range >= 0"),
    (json.dumps({"powerOn": "yes"}).encode(), "powerOn: expected true/false"),
    (b'{"pm25": NaN}', "not JSON: NaN is not a JSON value"),
    (b'{"pm25": 1, "note": Infinity}', "not JSON: Infinity is not a JSON value"),
    (json.dumps({"timestamp": "yesterday", "pm25": 1}).encode(), "timestamp: 'yesterday' is not ISO-8601"),
    (json.dumps({"ts": 1, "metrics": {"co2": "lots"}}).encode(), "metrics.co2: expected a number or boolean"),
    (json.dumps({"metrics": []}).encode(), "metrics: expected an object"),
    (json.dumps({"firmware": "1.2"}).encode(), "no known purifier metric"),
    # Lone surrogate (JSON allows it, UTF-8 cannot hold it): was accepted, then refused by the store and lost.
    (b'{"ts": 1763800000, "metrics": {"co2": 600}, "note": "\\ud800"}', "lone UTF-16 surrogate"),
    # A number past SQLite's integers: was an OverflowError in the decoder, logged as an ingest bug and lost.
    (b'{"timestamp": 1' + b"0" * 400 + b', "pm25": 1}', "out of range for a number"),
]


async def test_each_kind_of_bad_payload_is_quarantined_and_the_daemon_keeps_running(
    lan_gateway: RunningGateway,
) -> None:
    async with aio_client(lan_gateway, "AP-01") as client:
        for payload, _ in BAD_PAYLOADS:
            await client.publish("device/AP-01/data", payload, qos=1)
        await client.publish("device/AP-01/status", b"maybe", qos=1)
        await client.publish("device/AP-01/data", reading(pm25=3.0), qos=1)
    await wait_for(lambda: lan_gateway.query("SELECT count(*) FROM readings")[0][0] == 1)
    await lan_gateway.flush()
    rows = lan_gateway.query("SELECT payload, reason, device_id, topic FROM quarantine ORDER BY id")
    assert len(rows) == len(BAD_PAYLOADS) + 1
    for (payload, reason, device_id, topic), (sent, expected) in zip(rows, BAD_PAYLOADS, strict=False):
        assert payload == sent  # kept verbatim, so an installer can see what the device sent
        assert expected in reason, (expected, reason)
        assert (device_id, topic) == ("AP-01", "device/AP-01/data")
    assert rows[-1][1] == 'status must be "online" or "offline"'
    metrics = lan_gateway.gateway.metrics
    assert metrics.total("gateway_quarantined_total") == len(BAD_PAYLOADS) + 1  # counted by kind of reason:
    assert {reason: metrics.value("gateway_quarantined_total", reason=reason) for reason in (
        "not-json", "not-utf8", "not-object", "wrong-type", "out-of-range", "timestamp", "not-storable", "invalid",
        "bad-status")} == {"not-json": 4, "not-utf8": 1, "not-object": 2, "wrong-type": 5, "out-of-range": 3,
                           "timestamp": 1, "not-storable": 1, "invalid": 1, "bad-status": 1}
    assert not lan_gateway.task.done()


async def test_unknown_fields_are_kept_and_timestamps_normalised(lan_gateway: RunningGateway) -> None:
    async with aio_client(lan_gateway, "AP-01") as client:
        await client.publish("device/AP-01/data", b'{"timestamp": 1763800000123, "pm25": 1, "fw": "2.1"}', qos=1)
        await client.publish("device/AP-01/data", b'{"timestamp": 1763800001, "pm25": 2}', qos=1)
        await client.publish("device/AP-01/data", b'{"timestamp": "2025-11-22T08:26:42Z", "pm25": 3}', qos=1)
    await wait_for(lambda: lan_gateway.query("SELECT count(*) FROM readings")[0][0] == 3)
    rows = lan_gateway.query("SELECT ts, extra FROM readings ORDER BY id")
    assert rows[0] == (pytest.approx(1763800000.123), '{"fw":"2.1"}')
    assert rows[1] == (1763800001.0, None)
    assert rows[2][0] == 1763800002.0


async def test_status_and_will_drive_online_offline(lan_gateway: RunningGateway) -> None:
    will = aiomqtt.Will("device/AP-01/status", b"offline", qos=1, retain=True)
    async with aio_client(lan_gateway, "AP-01", will=will) as client:
        await client.publish("device/AP-01/status", b"online", qos=1, retain=True)
        await wait_for(lambda: lan_gateway.gateway.registry.state("AP-01").online)
        await client.publish("device/AP-01/status", b"offline", qos=1, retain=True)
        await wait_for(lambda: not lan_gateway.gateway.registry.state("AP-01").online)
        await client.publish("device/AP-01/status", b"online", qos=1, retain=True)
        await wait_for(lambda: lan_gateway.gateway.registry.state("AP-01").online)
    await wait_for(lambda: not lan_gateway.gateway.registry.state("AP-01").online)
    await lan_gateway.flush()
    events = [e for (e,) in lan_gateway.query("SELECT type FROM events WHERE device_id='AP-01' ORDER BY id")]
    assert events == ["device.online", "device.offline", "device.online", "device.offline"]
    assert lan_gateway.query("SELECT online FROM device_state WHERE device_id='AP-01'") == [(0,)]


async def test_reload_applies_new_devices_and_keeps_old_config_when_invalid(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(devices=["AP-01"])
    with pytest.raises(aiomqtt.MqttCodeError):
        async with aio_client(gw, "AP-09"):
            pass
    text = gw.config_path.read_text()
    from tests.fixtures.gateway import cheap_hash

    gw.config_path.write_text(
        text + f'[[devices]]\nid = "AP-09"\npassword_hash = "{cheap_hash(device_password("AP-09"))}"\n'
    )
    assert gw.gateway.reload()
    async with aio_client(gw, "AP-09") as client:
        await client.publish("device/AP-09/data", reading(), qos=1)
    await wait_for(lambda: gw.query("SELECT count(*) FROM readings WHERE device_id='AP-09'")[0][0] == 1)

    gw.config_path.write_text(text.replace('org = "test-org"', 'org = "bad org!"'))
    assert not gw.gateway.reload()
    assert gw.counter("gateway_config_reloads_total", result="rejected") == 1
    async with aio_client(gw, "AP-09"):  # the previous (valid) config still applies
        pass


async def test_back_pressure_when_the_writer_queue_is_full_loses_nothing(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory(storage="queue_size = 10\nmax_batch = 5")  # a tiny queue: devices wait on it
    async with aio_client(gw, "AP-01") as client:
        for i in range(300):
            await client.publish("device/AP-01/data", reading(pm25=float(i)), qos=1)
    await wait_for(lambda: gw.query("SELECT count(*) FROM readings")[0][0] == 300, timeout=10)


async def test_a_flooding_device_is_not_parsed_ahead_of_delivery_and_loses_nothing(
    gateway_factory: GatewayFactory,
) -> None:
    """A burst waits as bytes in the socket, not as thousands of parsed messages in amqtt's queue.

    Pausing the transport alone is not enough: everything already buffered (64 KB and more) would be
    parsed into message objects, ~1.5 KB each, and 100 purifiers flat out would leave +15 MB of RSS behind.
    """
    from tests.bench.mqttload import connect_packet, publish_packet

    gw = await gateway_factory(storage="queue_size = 10\nmax_batch = 5")  # a slow store: delivery lags
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(connect_packet("AP-01", "AP-01", device_password("AP-01")))
    assert (await reader.readexactly(4))[3] == 0
    session = gw.amqtt.sessions["AP-01"][0]
    deepest = 0

    async def watch() -> None:
        nonlocal deepest
        while True:
            deepest = max(deepest, session.delivered_message_queue.qsize())
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        burst = b"".join(publish_packet("device/AP-01/data", reading(pm25=float(i)), 0) for i in range(2000))
        writer.write(burst)  # QoS 0 flat out: only TCP can hold this device back
        await writer.drain()
        await wait_for(lambda: gw.query("SELECT count(*) FROM readings")[0][0] == 2000, timeout=30)
    finally:
        watcher.cancel()
        writer.close()
    assert deepest <= 16, f"{deepest} parsed messages waited for delivery"


async def test_a_device_that_publishes_and_disconnects_at_once_loses_nothing_acknowledged(
    gateway: RunningGateway,
) -> None:
    """Battery sensors wake, publish, disconnect. amqtt left what it had acknowledged but not delivered."""
    from tests.bench.mqttload import connect_packet, publish_packet

    total_acks = 0
    for _round in range(5):
        before = gateway.query("SELECT count(*) FROM readings")[0][0]
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(connect_packet("AP-01", "AP-01", device_password("AP-01")))
        assert (await reader.readexactly(4))[3] == 0
        burst = b"".join(
            publish_packet("device/AP-01/data", reading(pm25=float(i)), 1, packet_id=i + 1) for i in range(300)
        )
        acks = 0
        if _round % 2:  # 300 QoS 1 readings, then DISCONNECT in the same breath
            writer.write(burst + b"\xe0\x00")
        else:  # ...or DISCONNECT once the first PUBACK came, the others still on their way
            writer.write(burst)
            assert (await asyncio.wait_for(reader.readexactly(4), 5))[0] == 0x40
            acks += 1
            writer.write(b"\xe0\x00")
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            while True:
                header = await asyncio.wait_for(reader.readexactly(4), 5)
                if header[0] == 0x40:
                    acks += 1
        writer.close()
        total_acks += acks
        await wait_for(lambda: gateway.amqtt.client_sessions_running == 0)
        await gateway.flush()
        stored = gateway.query("SELECT count(*) FROM readings")[0][0] - before
        assert stored >= acks, f"{acks} readings acknowledged, {stored} stored"
        assert stored == 300  # everything sent before the DISCONNECT (delivered as read, not left queued)
    assert total_acks > 0  # the device did get acknowledgements, so the check above had teeth


async def test_tls_listener_with_configured_certificate(lan_gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    import ssl

    from tests.fixtures.gateway import free_port
    from tests.fixtures.tls import tls_listener

    tls_port = free_port()
    listener, ctx = tls_listener(tmp_path, tls_port)
    gw = await lan_gateway_factory(extra_listeners=listener)
    async with aiomqtt.Client("127.0.0.1", tls_port, identifier="AP-01", username="AP-01",
                              password=device_password("AP-01"), tls_context=ctx) as client:
        await client.publish("device/AP-01/data", reading(pm25=42.0), qos=1)
    await wait_for(lambda: gw.query("SELECT count(*) FROM readings")[0][0] == 1)
    # a client that does not trust the gateway's certificate does not get in
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", tls_port, identifier="AP-02", username="AP-02",
                                  password=device_password("AP-02"), tls_context=ssl.create_default_context()):
            pass


async def test_a_second_listener_named_default_does_not_replace_the_first(gateway_factory: GatewayFactory) -> None:
    from tests.fixtures.gateway import free_port

    second = free_port()
    gw = await gateway_factory(extra_listeners=f'[[broker.listeners]]\nname = "default"\nhost = "127.0.0.1"\n'
                                               f"port = {second}\n")
    # amqtt calls its first listener "default": a second listener must not overwrite it and leave a port shut
    assert sorted(gw.gateway.broker.bound_ports()) == sorted([gw.port, second])
    for port in (gw.port, second):
        async with aiomqtt.Client("127.0.0.1", port, identifier="AP-01", username="AP-01",
                                  password=device_password("AP-01")) as client:
            await client.publish("device/AP-01/data", reading(pm25=1.0), qos=1)
    await wait_for(lambda: gw.query("SELECT count(*) FROM readings")[0][0] == 2)


@contextlib.asynccontextmanager
async def taken_over_while_the_store_is_full(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch, burst: bytes
) -> AsyncIterator[None]:
    """AP-01 sends `burst` while the store writer holds its first batch (its online event) and its queue of 10
    fills; the reader waits with the message after those. Then AP-01 logs in again (a takeover), the store
    is released, and the body runs with the new connection up."""
    from tests.bench.mqttload import connect_packet

    writer_ = gw.gateway.writer
    # The retention pass at start puts its steps through the writer too: done first, the held batch is AP-01's.
    await wait_for(lambda: gw.gateway.lifecycle.passes >= 1)
    release = asyncio.Event()
    commit = writer_._commit_retrying

    async def held_commit(batch: list[Any]) -> None:
        await release.wait()
        await commit(batch)

    monkeypatch.setattr(writer_, "_commit_retrying", held_commit)
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(connect_packet("AP-01", "AP-01", device_password("AP-01")))
    assert (await reader.readexactly(4))[3] == 0
    writer.write(burst)
    await writer.drain()
    await wait_for(lambda: writer_.queue_depth == 10)
    await asyncio.sleep(0.2)
    takeover = asyncio.create_task(aio_client(gw, "AP-01").__aenter__())  # ends the first connection
    await asyncio.sleep(0.5)
    release.set()
    client = await asyncio.wait_for(takeover, 10)
    try:
        yield
    finally:
        await client.__aexit__(None, None, None)
        writer.close()


async def test_a_takeover_while_the_store_is_full_keeps_the_message_in_delivery(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader delivers as it reads. Torn down while it waits for room in the store's queue (longer than
    a closing connection waits for its delivery to end), the message it holds goes where the broker's
    leftovers are delivered from. A QoS 0 reading must not vanish there."""
    from gateway.broker.amqtt import connection
    from tests.bench.mqttload import publish_packet

    monkeypatch.setattr(connection, "DELIVERY_FINISH_WAIT", 0.1)  # the store stays full longer than this
    gw = await gateway_factory(storage="queue_size = 10\nmax_batch = 1")
    burst = b"".join(publish_packet("device/AP-01/data", reading(pm25=float(i)), 0) for i in range(11))
    async with taken_over_while_the_store_is_full(gw, monkeypatch, burst):
        await wait_for(lambda: gw.query("SELECT count(*) FROM readings")[0][0] == 11, timeout=10)
        assert gw.counter("gateway_broker_leftovers_delivered_total") == 1


async def test_a_takeover_lets_the_delivery_in_progress_finish(
    gateway_factory: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader waits for room in a full store with the device's `offline` status half delivered (noted,
    not yet queued). Cancelled there, the leftovers redid it from the start: no change left to record."""
    from tests.bench.mqttload import publish_packet

    gw = await gateway_factory(storage="queue_size = 10\nmax_batch = 1")
    burst = b"".join(publish_packet("device/AP-01/data", reading(pm25=float(i)), 0) for i in range(10))
    async with taken_over_while_the_store_is_full(gw, monkeypatch, burst + publish_packet(
            "device/AP-01/status", b"offline", 0)):
        await wait_for(lambda: gw.query("SELECT count(*) FROM readings")[0][0] == 10, timeout=10)
        await gw.flush()
        events = [e for (e,) in gw.query("SELECT type FROM events WHERE device_id = 'AP-01' ORDER BY id")]
        assert events == ["device.online", "device.offline", "device.online"]
        assert gw.counter("gateway_broker_leftovers_delivered_total") == 0  # nothing was cut in half
