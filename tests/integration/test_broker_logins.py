"""Password checks under load (issue 12, point 7): failed logins per source back off, and argon2 checks
run one (broker.max_password_checks) at a time in a worker thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway.broker.amqtt import logins
from gateway.core import passwords
from tests.bench.mqttload import connect_packet
from tests.fixtures.gateway import GatewayFactory, device_password


async def login(port: int, device: str, password: str, source: str = "127.0.0.1") -> int:
    """The CONNACK's return code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(connect_packet(device, device, password))
        return (await asyncio.wait_for(reader.readexactly(4), 20))[3]
    finally:
        writer.close()


async def test_failed_logins_slow_down_the_next_attempts_from_that_source_only(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(api="enabled = false")
    for _ in range(5):  # a device with a stale password, an installer's typos: not slowed
        assert await login(gw.port, "AP-01", "wrong", source="127.0.0.3") == 5
    assert gw.counter("gateway_broker_logins_delayed_total") == 0
    assert await login(gw.port, "AP-01", "wrong", source="127.0.0.3") == 5
    assert gw.counter("gateway_broker_logins_delayed_total") == 1  # the sixth waited for its turn
    # Another address is not held back, and logs in.
    assert await login(gw.port, "AP-02", device_password("AP-02"), source="127.0.0.4") == 0
    assert gw.counter("gateway_broker_logins_delayed_total") == 1


async def test_at_most_one_password_check_runs_at_once(gateway_factory: GatewayFactory,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    running, most = [0], [0]
    lock = threading.Lock()
    verify = passwords.verify_password

    def counted_verify(password_hash: str, password: str) -> bool:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)  # as long as a check on a small board: overlapping checks would show
        with lock:
            running[0] -= 1
        return verify(password_hash, password)

    monkeypatch.setattr(logins, "verify_password", counted_verify)
    devices = [f"AP-{i:02d}" for i in range(1, 21)]
    gw = await gateway_factory(api="enabled = false", devices=devices)
    codes = await asyncio.gather(*(login(gw.port, d, device_password(d)) for d in devices))  # a reconnect storm
    assert codes == [0] * 20
    assert most[0] == 1


def test_new_hashes_cost_owasps_argon2id_minimum_and_old_ones_still_verify() -> None:
    hashed = passwords.hash_password("s3cret")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    # argon2-cffi's default before (m = 64 MiB, t = 3, p = 4), as existing configs hold them
    old = "$argon2id$v=19$m=65536,t=3,p=4$G6Lg53EZ2ExDl+YP2v0Fiw$e/ZnLyU8VoytEO0u+jxl+VG+ZBIJPvUh3Yk5VS5DhNM"
    assert passwords.verify_password(old, "s3cret") and not passwords.verify_password(old, "other")
