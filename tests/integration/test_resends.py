"""A reading reaches the cloud once, under one msgId, however often the device sends it (issue 12, point 8).

A device resends a QoS 1 reading whose PUBACK it did not get: after a kill -9 of the gateway, after a
graceful stop that closed its connection first, or after its own connection dropped. The gateway
acknowledges what it committed before a graceful stop closes a connection, and recognises a resend of a
reading it already took (same device, time and content), also across a restart.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.bench.mqttload import connect_packet, publish_packet
from tests.fixtures.cloud import Cloud, start_daemon, uplink_config
from tests.fixtures.gateway import GatewayFactory, device_password, free_port, wait_for, write_config

# A reading of a minute ago: older than the retention window (90 days), the pass at start would delete it.
TS_MS = int((time.time() - 60) * 1000)
READING = json.dumps({"timestamp": TS_MS, "pm25": 7.9, "fanSpeed": 2, "powerOn": True, "co2": 612}).encode()
PUBLISH = publish_packet("device/AP-01/data", READING, 1, packet_id=7)
RESEND = bytes([PUBLISH[0] | 0x08]) + PUBLISH[1:]  # the same packet with DUP set, as a device resends it
PUBACK = b"\x40\x02\x00\x07"
PINGREQ, PINGRESP = b"\xc0\x00", b"\xd0\x00"


@asynccontextmanager
async def device(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet("AP-01", "AP-01", device_password("AP-01")))
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"\x20\x02\x00\x00"
    try:
        yield reader, writer
    finally:
        writer.close()


async def send_and_get_puback(port: int, packet: bytes) -> None:
    async with device(port) as (reader, writer):
        writer.write(packet)
        assert await asyncio.wait_for(reader.readexactly(4), 10) == PUBACK


def stored_readings(db: Path) -> list[tuple[float, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT ts, metrics FROM readings WHERE device_id = 'AP-01'").fetchall()


def outbox_empty(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        return bool(conn.execute("SELECT count(*) FROM outbox WHERE kind = 'telemetry'").fetchone()[0] == 0)


def msg_ids_of_the_reading(cloud: Cloud) -> set[str]:
    return {m["msgId"] for m in cloud.telemetry() if m["ts"] == TS_MS / 1000}


async def test_a_reading_sent_again_is_acknowledged_and_stored_once(gateway_factory: GatewayFactory,
                                                                   cloud: Cloud) -> None:
    gw = await gateway_factory(extra=uplink_config(cloud.broker.port))
    await send_and_get_puback(gw.port, PUBLISH)
    await send_and_get_puback(gw.port, RESEND)  # its connection dropped before the PUBACK: sent again
    other = json.dumps({"timestamp": TS_MS, "pm25": 8.0, "fanSpeed": 2, "powerOn": True}).encode()
    await send_and_get_puback(gw.port, publish_packet("device/AP-01/data", other, 1, packet_id=7))  # new content
    await gw.flush()
    assert len(stored_readings(gw.db_path)) == 2
    assert gw.counter("gateway_ingest_resends_total") == 1
    await wait_for(lambda: len(cloud.telemetry()) == 2 and outbox_empty(gw.db_path), timeout=10)
    # The flat form's extra number is a metric: the cloud's copy carries what the local one does.
    local = {json.loads(metrics)["pm25"]: json.loads(metrics) for _, metrics in stored_readings(gw.db_path)}
    assert {m["metrics"]["pm25"]: m["metrics"] for m in cloud.telemetry()} == local
    assert local[7.9]["co2"] == 612


def daemon_config(tmp_path: Path, cloud: Cloud, storage: str = "") -> tuple[int, Path, Path]:
    """(broker port, config, database) of a gateway process with one device, AP-01, and the cloud."""
    port = free_port()
    config = write_config(tmp_path, devices=["AP-01"], port=port, storage=storage, api="enabled = false",
                          extra=uplink_config(cloud.broker.port))
    return port, config, tmp_path / "data" / "gateway.db"


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 10)


async def resent_after_restart_reaches_the_cloud_once(config: Path, port: int, db: Path, cloud: Cloud) -> None:
    proc = await start_daemon(config, port)
    try:
        await send_and_get_puback(port, RESEND)
        await wait_for(lambda: bool(msg_ids_of_the_reading(cloud)) and outbox_empty(db), timeout=20)
    finally:
        await stop(proc)
    assert len(stored_readings(db)) == 1
    assert len(msg_ids_of_the_reading(cloud)) == 1


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_after_a_kill_9_a_committed_reading_sent_again_is_not_stored_twice(tmp_path: Path,
                                                                                 cloud: Cloud) -> None:
    port, config, db = daemon_config(tmp_path, cloud)
    proc = await start_daemon(config, port)
    try:
        async with device(port) as (reader, writer):
            writer.write(PUBLISH)
            assert await asyncio.wait_for(reader.readexactly(4), 10) == PUBACK  # committed
            proc.send_signal(signal.SIGKILL)  # the device never saw that PUBACK (say): it sends it again
            await proc.wait()
    finally:
        await stop(proc)
    await resent_after_restart_reaches_the_cloud_once(config, port, db, cloud)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_graceful_stop_acknowledges_what_it_committed_before_it_closes(tmp_path: Path,
                                                                               cloud: Cloud) -> None:
    # The store holds a trickle's first reading up to 1 s: the SIGTERM comes while it waits for its commit.
    port, config, db = daemon_config(tmp_path, cloud, storage="idle_linger_ms = 1000")
    proc = await start_daemon(config, port)
    try:
        async with device(port) as (reader, writer):
            writer.write(PUBLISH + PINGREQ)
            # PINGRESP comes after the PUBLISH was handed to the store (one connection is read in order).
            assert await asyncio.wait_for(reader.readexactly(2), 10) == PINGRESP
            proc.send_signal(signal.SIGTERM)
            # Committed on the way out, and acknowledged before the connection closes.
            assert await asyncio.wait_for(reader.read(), 10) == PUBACK
            assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        await stop(proc)
    assert len(stored_readings(db)) == 1
    await resent_after_restart_reaches_the_cloud_once(config, port, db, cloud)  # a device resending anyway
