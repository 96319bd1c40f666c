"""The pause between two connection attempts of the uplink: a back-off that ends early when the cloud is back.

A plain exponential back-off keeps a gateway away from a cloud that is already back: after a 28 s outage
the next attempt may be 30 s away. During the pause we therefore try a bare TCP connection (no TLS, no
MQTT: a SYN and a close) every `probe_every` seconds, jittered, and end the pause at the first that
succeeds. The probe runs only when the endpoint was unreachable when the pause began: a cloud that
accepts TCP but refused the last attempt (wrong password, a broken broker) gets the whole back-off, so a
refused gateway does not retry every second. A fleet reconnecting after an outage is spread by the
probes' random phase (each gateway's first probe lands somewhere in its first interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Literal

Woken = Literal["elapsed", "reachable"]


async def tcp_reachable(host: str, port: int, timeout: float) -> bool:
    """Does `host:port` accept a TCP connection within `timeout`? The connection is closed at once."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def pause_before_reconnect(backoff: float, host: str, port: int, *, probe_every: float) -> Woken:
    """Wait up to `backoff` seconds; "reachable" if a probe found the endpoint back before that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + backoff
    probe_timeout = min(probe_every, 2.0)
    if await tcp_reachable(host, port, probe_timeout):
        await asyncio.sleep(max(0.0, deadline - loop.time()))  # reachable but refused: the whole back-off
        return "elapsed"
    while True:
        left = deadline - loop.time()
        step = probe_every * random.uniform(0.5, 1.0)
        if left <= step:
            await asyncio.sleep(max(0.0, left))
            return "elapsed"
        await asyncio.sleep(step)
        if await tcp_reachable(host, port, probe_timeout):
            return "reachable"
