"""The broker's reader loop (gateway/broker/amqtt/reader_loop.py) on a fake amqtt handler."""

from __future__ import annotations

import asyncio
import gc
import io
from types import SimpleNamespace
from typing import Any

from amqtt.errors import MQTTError, ProtocolHandlerError

from gateway.broker.amqtt import reader_loop
from tests.bench.mqttload import publish_packet


class _Reader:
    """Bytes, then EOF once `before_eof` is set; every read lets other tasks run, as a socket's would."""

    def __init__(self, data: bytes, before_eof: asyncio.Event) -> None:
        self._data = io.BytesIO(data)
        self._before_eof = before_eof

    async def read(self, n: int = -1) -> bytes:
        await asyncio.sleep(0)
        chunk = self._data.read(n)
        if not chunk:
            await self._before_eof.wait()
        return chunk


class _Handler:
    def __init__(self, data: bytes) -> None:
        self.started = asyncio.Event()
        self.session = SimpleNamespace(keep_alive=0, client_id="AP-01")
        self.plugins_manager = SimpleNamespace(fire_event=self._no_event)
        self.reader = _Reader(data, self.started)
        self._reader_ready = asyncio.Event()
        self._reader_stopped = asyncio.Event()

    async def _no_event(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def handle_publish(self, packet: Any) -> None:
        """amqtt's QoS 2 flow waiting for PUBREL: a cancel inside its send becomes ProtocolHandlerError."""
        self.started.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError as exc:
            raise ProtocolHandlerError("Packet handling was cancelled") from exc

    async def handle_connection_closed(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def handle_read_timeout(self) -> None:
        return None


async def test_a_qos2_flow_cut_off_by_the_connections_end_leaves_no_unretrieved_error() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        handler = _Handler(publish_packet("device/AP-01/data", b"{}", 2, packet_id=3))
        errors: list[MQTTError] = []
        await reader_loop._reader_loop(handler, errors.append, 1024)
        for _ in range(5):
            await asyncio.sleep(0)
        del handler
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert not errors
    assert not [c for c in reported if "never retrieved" in c.get("message", "")], reported
