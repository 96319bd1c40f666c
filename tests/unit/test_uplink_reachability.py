"""The uplink's pause between connection attempts ends early when the cloud accepts TCP again."""

from __future__ import annotations

import asyncio

from gateway.uplink.reachability import pause_before_reconnect, tcp_reachable
from tests.fixtures.gateway import free_port


class Listener:
    """A TCP listener that counts the connections it was offered (the probes)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def _on_client(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()

    async def start(self, port: int) -> None:
        self.server = await asyncio.start_server(self._on_client, "127.0.0.1", port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_cloud_that_comes_back_ends_a_long_back_off_at_the_next_probe() -> None:
    port = free_port()
    pause = asyncio.create_task(pause_before_reconnect(300.0, "127.0.0.1", port, probe_every=0.1))
    listener = Listener()
    await asyncio.sleep(0.25)  # a few probes found nothing
    assert not pause.done()
    await listener.start(port)
    try:
        assert await asyncio.wait_for(pause, 10) == "reachable"  # not the 300 s back-off
        assert listener.accepted == 1
    finally:
        await listener.stop()


async def test_a_cloud_that_accepts_tcp_but_refused_the_attempt_gets_the_whole_back_off() -> None:
    """Reachable when the pause begins: the last attempt failed above TCP (a refused login); no early retry."""
    listener = Listener()
    port = free_port()
    await listener.start(port)
    try:
        assert await pause_before_reconnect(0.5, "127.0.0.1", port, probe_every=0.05) == "elapsed"
        assert listener.accepted == 1  # the one check at the start, no probing during the back-off
    finally:
        await listener.stop()


async def test_an_unreachable_cloud_waits_out_the_back_off() -> None:
    port = free_port()
    assert await pause_before_reconnect(0.3, "127.0.0.1", port, probe_every=0.05) == "elapsed"
    assert not await tcp_reachable("127.0.0.1", port, 1.0)
