"""Store-and-forward to a real Mosquitto as the cloud broker (CONTRACT section 2)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import trustme

from tests.fixtures.cloud import Cloud, start_daemon, uplink_config
from tests.fixtures.gateway import GatewayFactory, RunningGateway, device_password, wait_for
from tests.fixtures.mosquitto import MosquittoFactory, TLSFiles


async def publish_readings(gw: RunningGateway, device_id: str, count: int, start: int = 0) -> None:
    async with aiomqtt.Client("127.0.0.1", gw.port, identifier=device_id, username=device_id,
                              password=device_password(device_id)) as client:
        for i in range(start, start + count):
            body = {"timestamp": 1763800000000 + i * 1000, "pm25": float(i), "fanSpeed": 1, "powerOn": True}
            await client.publish(f"device/{device_id}/data", json.dumps(body), qos=1)


def outbox_rows(gw: RunningGateway) -> int:
    return int(gw.query("SELECT count(*) FROM outbox")[0][0])


async def test_steady_flow_arrives_with_msg_ids_in_per_device_order(
    gateway_factory: GatewayFactory, cloud: Cloud
) -> None:
    gw = await gateway_factory(devices=["AP-01", "AP-02"], extra=uplink_config(cloud.broker.port))
    await asyncio.gather(publish_readings(gw, "AP-01", 60), publish_readings(gw, "AP-02", 60))
    await wait_for(lambda: len(cloud.telemetry()) == 120, timeout=15)
    await wait_for(lambda: outbox_rows(gw) == 0 or gw.gateway.uplink is None, timeout=5)
    telemetry = cloud.telemetry()
    ids = cloud.msg_ids()
    assert len(set(ids)) == 120 and all(i.startswith("gw-test:") for i in ids)
    for device in ("AP-01", "AP-02"):
        topic = f"v1/telemetry/test-org/{device}"
        pm = [p["metrics"]["pm25"] for t, p, _ in cloud.messages if t == topic and isinstance(p, dict)]
        assert pm == [float(i) for i in range(60)]  # each device's readings in their order
    first = telemetry[0]
    assert set(first) == {"ts", "metrics", "gatewayId", "msgId"} and first["gatewayId"] == "gw-test"
    assert first["ts"] == 1763800000.0
    status = [p for t, p, _ in cloud.messages if t == "v1/gateways/test-org/gw-test/status" and isinstance(p, dict)]
    assert status and status[0]["online"] is True and {"version", "startedAt", "backlog"} <= set(status[0])
    devices = [p for t, p, _ in cloud.messages if t == "v1/gateways/test-org/gw-test/devices"]
    assert devices and {d["id"] for d in devices[0]} == {"AP-01", "AP-02"}  # type: ignore[index,union-attr]
    events = [p for t, p, _ in cloud.messages if t.startswith("v1/events/")]
    assert any(isinstance(e, dict) and e["type"] == "device.online" for e in events)

    # the retained device list follows a device going offline (checked every 5 s)
    await wait_for(lambda: any(
        isinstance(p, list) and any(d["id"] == "AP-01" and d["online"] is False for d in p)
        for t, p, _ in cloud.messages if t.endswith("/devices")), timeout=8)

    await gw.stop()  # an orderly stop says "offline" itself (the broker publishes the Will only on a loss)
    await wait_for(lambda: [p for t, p, _ in cloud.messages
                            if t.endswith("/status") and isinstance(p, dict)][-1]["online"] is False)


async def test_cloud_broker_stopped_under_load_then_started_loses_nothing(
    gateway_factory: GatewayFactory, cloud: Cloud
) -> None:
    gw = await gateway_factory(devices=["AP-01", "AP-02"], extra=uplink_config(cloud.broker.port))
    await publish_readings(gw, "AP-01", 100)
    cloud.broker.stop()
    await asyncio.gather(publish_readings(gw, "AP-01", 200, start=100), publish_readings(gw, "AP-02", 300))
    await wait_for(lambda: gw.gateway.uplink is not None and not gw.gateway.uplink.state.connected)
    assert outbox_rows(gw) >= 400  # waiting on disk, not in memory
    cloud.broker.start()
    await publish_readings(gw, "AP-02", 100, start=300)  # live data while the backlog drains
    await wait_for(lambda: outbox_rows(gw) == 0, timeout=30)
    await wait_for(lambda: len(set(cloud.msg_ids())) >= 700, timeout=10)
    readings_sent = gw.query("SELECT count(*) FROM readings")[0][0]
    assert readings_sent == 700
    assert len(set(cloud.msg_ids())) == 700  # counted by msgId: nothing lost
    assert gw.gateway.uplink is not None and gw.gateway.uplink.state.reconnects >= 1


async def test_a_returning_cloud_is_found_by_a_probe_before_the_back_off_ends(
    gateway_factory: GatewayFactory, cloud: Cloud
) -> None:
    """After a few failed attempts the back-off is seconds long; the cloud's return ends it at the next
    TCP probe, and the backlog flows at once."""
    gw = await gateway_factory(devices=["AP-01"], extra=uplink_config(
        cloud.broker.port, reconnect_max_seconds=60, probe_interval_seconds=0.2))
    uplink = gw.gateway.uplink
    assert uplink is not None
    await wait_for(lambda: uplink.state.connected)
    cloud.broker.stop()
    await wait_for(lambda: uplink.state.reconnects >= 3, timeout=30)  # the pause now is 2-4 s, growing
    await publish_readings(gw, "AP-01", 5)
    loop = asyncio.get_running_loop()
    back_at = loop.time()
    cloud.broker.start()
    await wait_for(lambda: len(set(cloud.msg_ids())) == 5, timeout=30)
    print(f"cloud back -> 5 readings delivered in {loop.time() - back_at:.2f} s")
    assert uplink.state.cloud_found_by_probe == 1  # the probe ended the pause, not its 2-8 s running out


async def rpc(cloud: Cloud, request: dict[str, Any] | bytes, timeout: float = 5.0) -> dict[str, Any]:
    before = len([1 for t, _, _ in cloud.messages if t.endswith("/response")])
    payload = request if isinstance(request, bytes) else json.dumps(request).encode()
    async with aiomqtt.Client(cloud.broker.host, cloud.broker.port, identifier="cloud-rpc") as client:
        await client.publish("v1/commands/test-org/gw-test/request", payload, qos=1)
    responses: list[Any] = []

    def arrived() -> bool:
        responses[:] = [p for t, p, _ in cloud.messages if t.endswith("/response")]
        return len(responses) > before

    await wait_for(arrived, timeout=timeout)
    result = responses[before]
    assert isinstance(result, dict)
    return result


async def test_json_rpc_round_trip_and_a_repeated_id_is_answered_not_executed_again(
    gateway_factory: GatewayFactory, cloud: Cloud
) -> None:
    gw = await gateway_factory(devices=["AP-01"], extra=uplink_config(cloud.broker.port))
    await wait_for(lambda: gw.gateway.uplink is not None and gw.gateway.uplink.state.connected)
    first = await rpc(cloud, {"jsonrpc": "2.0", "id": "c-1", "method": "gateway.ping"})
    assert first["id"] == "c-1" and first["result"]["pong"] is True
    again = await rpc(cloud, {"jsonrpc": "2.0", "id": "c-1", "method": "gateway.ping"})
    assert again == first  # the stored first answer (same ts), not a second execution
    assert gw.query("SELECT count(*) FROM rpc_log") == [(1,)]

    unknown = await rpc(cloud, {"jsonrpc": "2.0", "id": 7, "method": "device.explode"})
    assert unknown["error"]["code"] == -32601 and unknown["id"] == 7
    missing = await rpc(cloud, {"jsonrpc": "2.0", "id": "c-2", "method": "device.state", "params": {}})
    assert missing["error"]["code"] == -32602 and "device" in missing["error"]["message"]
    extra = await rpc(cloud, {"jsonrpc": "2.0", "id": "c-3", "method": "gateway.ping", "params": {"x": 1}})
    assert extra["error"]["code"] == -32602 and "x" in extra["error"]["message"]
    bad = await rpc(cloud, b"{not json")
    assert bad["error"]["code"] == -32700 and bad["id"] is None
    state = await rpc(cloud, {"jsonrpc": "2.0", "id": "c-4", "method": "device.state", "params": {"device": "AP-01"}})
    assert state["result"]["device"] == "AP-01" and state["result"]["online"] is False
    devices = await rpc(cloud, {"jsonrpc": "2.0", "id": "c-5", "method": "gateway.devices"})
    assert [d["id"] for d in devices["result"]] == ["AP-01"]


async def test_budget_drops_oldest_telemetry_first_and_reports_it(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    from tests.fixtures.gateway import free_port

    dead = free_port()  # no cloud: everything stays in the outbox
    gw = await gateway_factory(
        devices=["AP-01"],
        extra=uplink_config(dead) + "[outbox]\nmax_rows = 150\nprune_interval_seconds = 0.2\n",
    )
    await publish_readings(gw, "AP-01", 300)
    await wait_for(lambda: gw.counter("gateway_outbox_dropped_total", kind="telemetry") >= 150, timeout=10)
    await gw.flush()
    rows = gw.query("SELECT kind, min(seq), count(*) FROM outbox GROUP BY kind ORDER BY kind")
    kinds = {k: (lo, n) for k, lo, n in rows}
    assert kinds["telemetry"][1] <= 150
    # the newest readings are the ones kept
    newest = gw.query("SELECT max(json_extract(body, '$.pm25')) FROM outbox WHERE kind = 'telemetry'")[0][0]
    assert newest == 299.0
    # events survive the budget; the drop itself is an event, counted by kind
    assert "event" in kinds
    dropped = gw.query("SELECT data FROM events WHERE type = 'outbox.dropped'")
    # one event per budget pass that dropped something (the readings may span several passes)
    assert dropped and sum(json.loads(d)["dropped"].get("telemetry", 0) for (d,) in dropped) >= 150


async def test_ttl_deletes_rows_older_than_their_time(gateway_factory: GatewayFactory) -> None:
    from tests.fixtures.gateway import free_port

    gw = await gateway_factory(
        devices=["AP-01"],
        extra=uplink_config(free_port()) + "[outbox]\nttl_days = 0.00001\nprune_interval_seconds = 0.2\n",
    )  # ttl 0.864 s
    await publish_readings(gw, "AP-01", 20)
    await wait_for(lambda: outbox_rows(gw) > 0)
    await wait_for(lambda: gw.query("SELECT count(*) FROM outbox WHERE kind='telemetry'")[0][0] == 0, timeout=10)
    assert gw.counter("gateway_outbox_dropped_total", kind="telemetry") == 20


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_files(folder: Path, ca: trustme.CA) -> TLSFiles:
    folder.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    return TLSFiles(cafile=folder / "ca.pem", certfile=folder / "cert.pem", keyfile=folder / "key.pem")


async def test_tls_with_the_right_ca_connects_and_a_wrong_ca_is_refused(
    gateway_factory: GatewayFactory, make_mosquitto: MosquittoFactory, ca: trustme.CA, tmp_path: Path
) -> None:
    files = tls_files(tmp_path / "tls", ca)
    broker = make_mosquitto(tls=files)
    good = await gateway_factory(
        devices=["AP-01"],
        extra=uplink_config(broker.tls_port or 0, tls=True, ca_file=str(files.cafile)),
    )
    await wait_for(lambda: good.gateway.uplink is not None and good.gateway.uplink.state.connected, timeout=10)

    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    bad = await gateway_factory(
        devices=["AP-01"],
        extra=uplink_config(broker.tls_port or 0, tls=True, ca_file=str(tmp_path / "other-ca.pem")),
    )
    await wait_for(lambda: bad.gateway.uplink is not None and bad.gateway.uplink.state.last_error is not None)
    assert bad.gateway.uplink is not None
    assert not bad.gateway.uplink.state.connected
    assert "CERTIFICATE_VERIFY_FAILED" in (bad.gateway.uplink.state.last_error or "")



@pytest.mark.slow
@pytest.mark.timeout(180)  # ~20 s on a busy 2-core machine; its own waits allow up to 110 s
async def test_kill_9_during_a_drain_loses_nothing_and_resends_at_most_the_window(
    cloud: Cloud, tmp_path: Path
) -> None:
    import signal
    import sqlite3

    from tests.fixtures.gateway import free_port, write_config

    port = free_port()
    config = write_config(tmp_path, devices=["AP-01", "AP-02"], port=port,
                          extra=uplink_config(cloud.broker.port, inflight=20))
    db = tmp_path / "data" / "gateway.db"
    cloud.broker.stop()
    proc = await start_daemon(config, port)
    try:
        class Fake:  # publish_readings needs only .port
            pass

        target = Fake()
        target.port = port  # type: ignore[attr-defined]
        await asyncio.gather(publish_readings(target, "AP-01", 1500),  # type: ignore[arg-type]
                             publish_readings(target, "AP-02", 1500))  # type: ignore[arg-type]
        cloud.broker.start()
        await wait_for(lambda: len(cloud.telemetry()) >= 300, timeout=20, interval=0.005)
        proc.send_signal(signal.SIGKILL)  # in the middle of the drain
        await proc.wait()
        got_before = len(cloud.telemetry())
        assert got_before < 3000, "the drain finished before the kill: nothing was tested"
        proc = await start_daemon(config, port)

        def drained() -> bool:
            with sqlite3.connect(db) as conn:
                return bool(conn.execute("SELECT count(*) FROM outbox WHERE kind = 'telemetry'").fetchone()[0] == 0)

        await wait_for(drained, timeout=60)
        await wait_for(lambda: len(set(cloud.msg_ids())) >= 3000, timeout=10)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
    ids = cloud.msg_ids()
    assert len(set(ids)) == 3000  # 0 lost, counted by msgId
    duplicates = len(ids) - len(set(ids))
    assert duplicates <= 20, f"{duplicates} duplicates for an in-flight window of 20"


async def test_cloud_commands_preclean_and_schedules_over_json_rpc(
    gateway_factory: GatewayFactory, cloud: Cloud
) -> None:
    from firmware_sim.purifier import SimulatedPurifier

    gw = await gateway_factory(devices=["AP-01", "AP-02"], extra=uplink_config(cloud.broker.port),
                               api="enabled = false")
    await wait_for(lambda: gw.gateway.uplink is not None and gw.gateway.uplink.state.connected)
    sim = SimulatedPurifier(device_id="AP-01", password=device_password("AP-01"), port=gw.port, interval=3600, seed=3)
    sim.model.fan_speed = 1
    task = asyncio.create_task(sim.run())
    try:
        await wait_for(lambda: gw.gateway.controller.executor.is_online("AP-01"))
        ok = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-1", "method": "device.setFanSpeed",
                               "params": {"device": "AP-01", "value": 3}})
        assert ok["result"]["status"] == "acked" and ok["result"]["state"]["fanSpeed"] == 3
        assert sim.model.fan_speed == 3
        # the same request id again: the stored answer, the device is not commanded twice
        executed = sim.model.executed_commands
        again = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-1", "method": "device.setFanSpeed",
                                  "params": {"device": "AP-01", "value": 3}})
        assert again == ok and sim.model.executed_commands == executed

        offline = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-2", "method": "device.turnOff",
                                    "params": {"device": "AP-02"}})
        assert offline["error"]["code"] == -32000 and offline["error"]["data"]["status"] == "pending"
        bad = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-3", "method": "device.setFanSpeed",
                                "params": {"device": "AP-01", "value": 9}})
        assert bad["error"]["code"] == -32602 and "value" in bad["error"]["message"]
        unknown = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-4", "method": "device.turnOn",
                                    "params": {"device": "nope"}})
        assert unknown["error"]["code"] == -32602 and "device" in unknown["error"]["message"]

        started = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-5", "method": "preclean.start",
                                    "params": {"device": "AP-01", "fanSpeed": 5, "minutes": 15}})
        assert started["result"]["active"] is True and started["result"]["fanSpeed"] == 5
        await wait_for(lambda: sim.model.fan_speed == 5)
        status = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-6", "method": "preclean.status",
                                   "params": {"device": "AP-01"}})
        assert 0 < status["result"]["remainingSeconds"] <= 900
        cancelled = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-7", "method": "preclean.cancel",
                                      "params": {"device": "AP-01"}})
        assert cancelled["result"]["cancelled"] is True
        await wait_for(lambda: sim.model.fan_speed == 3)

        created = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-8", "method": "schedule.create", "params": {
            "device": "AP-01", "days": ["Sat", "Sun"], "start": "22:00", "end": "06:00", "fanSpeed": 2}})
        sid = created["result"]["id"]
        bad_schedule = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-9", "method": "schedule.create", "params": {
            "device": "AP-01", "days": ["Sat"], "start": "25:00", "end": "06:00", "fanSpeed": 2}})
        assert bad_schedule["error"]["code"] == -32602 and "start" in bad_schedule["error"]["message"]
        updated = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-10", "method": "schedule.update",
                                    "params": {"id": sid, "fanSpeed": 4}})
        assert updated["result"]["fanSpeed"] == 4 and updated["result"]["days"] == ["Sat", "Sun"]
        listed = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-11", "method": "schedule.list",
                                   "params": {"device": "AP-01"}})
        assert [s["id"] for s in listed["result"]] == [sid]
        deleted = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-12", "method": "schedule.delete", "params": {"id": sid}})
        assert deleted["result"]["deleted"] is True
        gone = await rpc(cloud, {"jsonrpc": "2.0", "id": "k-13", "method": "schedule.delete", "params": {"id": sid}})
        assert gone["error"]["code"] == -32602 and "id" in gone["error"]["message"]
    finally:
        sim.stop()
        await asyncio.wait_for(task, 5)
    # command results, pre-clean and device events reached the cloud as events
    await wait_for(lambda: {"command.result", "preclean.started", "preclean.ended"} <= {
        p.get("type") for t, p, _ in cloud.messages if t.startswith("v1/events/") and isinstance(p, dict)})


async def test_a_full_in_flight_window_is_not_a_warning_per_reading(
    gateway_factory: GatewayFactory, cloud: Cloud, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("WARNING", logger="mqtt")
    gw = await gateway_factory(devices=["AP-01"], extra=uplink_config(cloud.broker.port))
    await wait_for(lambda: gw.gateway.uplink is not None and gw.gateway.uplink.state.connected)
    await publish_readings(gw, "AP-01", 400)
    await wait_for(lambda: len(cloud.telemetry()) >= 400, timeout=20)
    # aiomqtt logs "There are N pending publish calls." for each publish past its limit, which the uplink raises
    assert not [r for r in caplog.records if "pending publish calls" in r.getMessage()]
