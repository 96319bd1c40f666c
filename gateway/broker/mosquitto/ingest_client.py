"""The gateway's own client on the managed Mosquitto: it takes what devices publish, QoS 1, persistent session.

An asyncio protocol on the daemon's event loop (no thread) speaking the little MQTT 3.1.1 it needs
(mqtt_wire.py), with acknowledgements by hand: a message is handed to the BrokerSink, and its PUBACK goes to
Mosquitto only when the sink's receipt is done (the store committed it); the PUBACKs of one commit go in one
write. What was never acknowledged stays in the session Mosquitto keeps for us and comes again when it
resumes (after a restart of either side). Messages are handed over one at a time in arrival order. When the
store falls behind, the client stops parsing and reading once INCOMING_MAX messages wait here: the rest wait
in Mosquitto's queue for our session, unparsed, and the CPU goes to the store and the cloud link.
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import Any

import structlog

from gateway.broker.mosquitto import mqtt_wire as wire
from gateway.broker.mosquitto.config_files import IngestEndpoint
from gateway.core.ports import BrokerSink
from gateway.core.topics import DEVICE_PUBLISH_CHANNELS, device_topic

log = structlog.get_logger(__name__)

SUBSCRIPTIONS = [(device_topic("+", channel), 1) for channel in sorted(DEVICE_PUBLISH_CHANNELS)]
KEEPALIVE = 30
_PREFIX = len("device/")
_SUBSCRIBE_ID = 1
# Messages parsed and not yet handed to the sink: past this nothing more is parsed or read until half are handed
# over (Mosquitto's max_inflight_messages does not bound it: QoS 0, and measured under overload, 10,000 held).
INCOMING_MAX = 256
_HANDED_PER_TURN = 16  # messages handed to the sink before the consumer lets other tasks run


class IngestClientError(RuntimeError):
    """The client could not log in or subscribe, or lost its connection."""


class IngestClient(asyncio.Protocol):
    def __init__(self, endpoint: IngestEndpoint, *, username: str, password: str, sink: BrokerSink,
                 keepalive: int = KEEPALIVE) -> None:
        self._endpoint = endpoint
        self._keepalive_s = keepalive
        self._username = username
        self._password = password
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._incoming: deque[wire.Publish] = deque()  # every one from the current connection
        self._reader = wire.PacketReader(self._incoming, INCOMING_MAX)
        self._paused = False  # the transport is not read (INCOMING_MAX)
        self._connection = 0  # a packet id is acknowledged only on the connection it came on
        self._wake = asyncio.Event()
        self._waiter: asyncio.Future[Any] | None = None  # CONNACK or SUBACK awaited
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_due = False  # a PINGREQ went out and nothing has come back since
        self._consumer: asyncio.Task[None] | None = None
        self._receipt: asyncio.Future[None] | None = None  # the receipt the newest batch of ids waits on
        self._batch: list[int] = []
        self._batch_connection = 0
        self._refusing = False  # a receipt failed: no more PUBACKs on this connection (Mosquitto resends)
        self._intake_open = True
        self._next_id = 0
        self._commands: dict[int, tuple[str, bytes]] = {}  # our QoS 1 publishes Mosquitto has not acknowledged
        self.connected = False

    # --- life ---------------------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> bool:
        """Log in (and subscribe, when Mosquitto kept no session for us); raises IngestClientError. Whether
        Mosquitto had kept our session."""
        self._lost = self._loop.create_future()
        self._connection += 1
        self._refusing = False
        self._receipt, self._batch = None, []
        self._waiter = self._loop.create_future()
        ep = self._endpoint
        try:
            async with asyncio.timeout(timeout):
                if ep.socket_path is not None:
                    await self._loop.create_unix_connection(lambda: self, str(ep.socket_path))
                else:
                    await self._loop.create_connection(lambda: self, "127.0.0.1", ep.port)
                self._write(wire.connect(self._username, self._username, self._password, self._keepalive_s,
                                         clean_session=False))
                session_present: bool = await self._waiter
                if not session_present:
                    self._waiter = self._loop.create_future()
                    self._write(wire.subscribe(_SUBSCRIBE_ID, SUBSCRIPTIONS))
                    await self._waiter
        except (OSError, TimeoutError, IngestClientError) as exc:
            if self._transport is not None:
                self._transport.abort()
            raise IngestClientError(f"gateway client on Mosquitto: {exc}") from exc
        finally:
            self._waiter = None
        self.connected = True
        for packet_id, (topic, payload) in self._commands.items():  # as paho did: unacknowledged ones again
            self._write(wire.publish(topic, payload, qos=1, packet_id=packet_id, dup=True))
        if self._consumer is None or self._consumer.done():
            self._consumer = self._loop.create_task(self._consume(), name="mosquitto-ingest")
            self._consumer.add_done_callback(self._consumer_ended)
        return session_present

    async def wait_lost(self) -> None:
        """Returns when the connection is lost (raises nothing: the caller decides what that means)."""
        await asyncio.shield(self._lost)

    def stop_intake(self) -> None:
        """Hand no more messages to the sink: what is left unacknowledged stays in Mosquitto's session."""
        self._intake_open = False
        self._wake.set()

    async def close(self) -> None:
        """Send the acknowledgements due (receipts already done), then disconnect."""
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.gather(self._consumer, return_exceptions=True)
            self._consumer = None
        if self.connected and self._transport is not None:
            self._transport.write(wire.DISCONNECT_PACKET)  # after the PUBACKs already written: they go first
            self._transport.close()
            try:
                async with asyncio.timeout(2):
                    await self.wait_lost()
            except TimeoutError:
                log.warning("mosquitto.ingest_close_slow")
                if self._transport is not None:
                    self._transport.abort()

    def publish(self, topic: str, payload: bytes) -> None:
        """A command, QoS 1 (sent again on the next connection until Mosquitto acknowledges it)."""
        if not self.connected:
            raise IngestClientError("not connected to Mosquitto")
        packet_id = self._take_id()
        self._commands[packet_id] = (topic, payload)
        self._write(wire.publish(topic, payload, qos=1, packet_id=packet_id))

    # --- messages -----------------------------------------------------------------------------------

    async def _consume(self) -> None:
        incoming, sink = self._incoming, self._sink
        run = 0
        while True:
            if not incoming or not self._intake_open:
                self._wake.clear()
                await self._wake.wait()
                continue
            if run >= _HANDED_PER_TURN:
                # Handed over without a wait while the store has room: let the uplink and the store writer run
                # between bursts, as the embedded broker's readers do.
                run = 0
                await asyncio.sleep(0)
                continue  # (a lost connection may have emptied `incoming` meanwhile)
            run += 1
            packet_id, qos, topic, payload = incoming.popleft()
            connection = self._connection  # the deque holds the current connection's messages only
            if self._paused and len(incoming) <= INCOMING_MAX // 2:
                self._read_again()
            # Only device/+/{channel} is subscribed, and the ACL lets only device {id} publish to device/{id}/...
            device_id = topic[_PREFIX:topic.index("/", _PREFIX)]
            receipt = await sink.message(device_id, topic, payload)
            if qos == 0:
                continue
            if receipt is None:  # stored already; behind the batch still waiting, if any (PUBACKs in order)
                if self._receipt is not None and connection == self._batch_connection:
                    self._batch.append(packet_id)
                else:
                    self._ack(connection, [packet_id])
            elif receipt is self._receipt and connection == self._batch_connection:
                self._batch.append(packet_id)  # one callback and one write per store commit, not per message
            else:
                self._receipt, self._batch, self._batch_connection = receipt, [packet_id], connection
                receipt.add_done_callback(partial(self._settle, connection, self._batch))

    def _consumer_ended(self, task: asyncio.Task[None]) -> None:
        """A bug ended the consumer: say so, and drop the connection (connect() starts a new consumer; what was
        not acknowledged comes again)."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("mosquitto.ingest_consumer_failed", exc_info=task.exception())
        if self._transport is not None:
            self._transport.abort()

    def _settle(self, connection: int, packet_ids: list[int], receipt: asyncio.Future[None]) -> None:
        if receipt is self._receipt:
            self._receipt = None  # no batch waits now: a message stored already is acknowledged at once
        if connection != self._connection:
            return  # that connection is gone: Mosquitto sends these again on the current one
        if receipt.cancelled() or receipt.exception() is not None:
            # Not stored: no PUBACK for these nor any later one on this connection. Mosquitto sends them
            # again when the session resumes; while intake runs, reconnect for that.
            if not self._refusing and self._intake_open and self.connected and self._transport is not None:
                log.warning("mosquitto.ingest_not_stored", reconnecting=True)
                self._transport.close()
            self._refusing = True
            return
        self._ack(connection, packet_ids)

    def _ack(self, connection: int, packet_ids: list[int]) -> None:
        # (Not `connected`: a resumed session's messages can be handled before connect() has returned.)
        if self._refusing or connection != self._connection:
            return
        self._write(wire.pubacks(packet_ids))

    def _take_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._commands:
                return self._next_id
        raise IngestClientError("65,535 commands unacknowledged by Mosquitto")

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _read_again(self) -> None:
        """Half of what was parsed ahead is handed over: parse what was held back, then read on if room is left."""
        self._received(b"")
        if self._paused and len(self._incoming) < INCOMING_MAX and self._transport is not None:
            self._paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    # --- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._reader.reset()
        self._ping_due = False
        self._keepalive = self._loop.call_later(self._keepalive_s / 2, self._ping)

    def data_received(self, data: bytes) -> None:
        self._ping_due = False  # Mosquitto is there
        self._received(data)

    def _received(self, data: bytes) -> None:
        incoming = self._incoming
        try:
            others = self._reader.feed(data)
        except wire.ProtocolError as exc:
            log.error("mosquitto.ingest_protocol_error", error=str(exc))
            if self._transport is not None:
                self._transport.abort()
            return
        if incoming:
            self._wake.set()
            if len(incoming) >= INCOMING_MAX and not self._paused and self._transport is not None:
                # The store is behind: stop reading what it cannot take yet (the rest of this chunk is held
                # unparsed by the reader); the consumer reads on once it has handed half of these over.
                self._paused = True
                self._transport.pause_reading()
        for kind, body in others:
            self._control_packet(kind, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.connected = False
        self._transport = None
        self._paused = False
        self._incoming.clear()  # unacknowledged: Mosquitto sends them again on the next connection
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if not self._lost.done():
            self._lost.set_result(None)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(IngestClientError(f"disconnected: {exc or 'closed by Mosquitto'}"))

    def _control_packet(self, kind: int, body: bytes) -> None:
        waiter = self._waiter
        if kind == wire.PUBACK:
            if len(body) >= 2:
                self._commands.pop(int.from_bytes(body[:2], "big"), None)
        elif kind == wire.CONNACK and waiter is not None and not waiter.done() and len(body) == 2:
            if body[1] != 0:
                waiter.set_exception(IngestClientError(f"login refused: CONNACK return code {body[1]}"))
            else:
                waiter.set_result(bool(body[0] & 0x01))
        elif kind == wire.SUBACK and waiter is not None and not waiter.done():
            if any(code & 0x80 for code in body[2:]):
                waiter.set_exception(IngestClientError(f"subscription refused: return codes {list(body[2:])}"))
            else:
                waiter.set_result(True)

    def _ping(self) -> None:
        """Every half keepalive: a PINGREQ. A connection that brought nothing since the last one is dead, unless
        reading is paused (for the store: then nothing can be known)."""
        transport = self._transport
        if transport is None:
            return
        if self._ping_due and not self._paused:
            log.warning("mosquitto.ingest_no_pingresp")
            transport.abort()
            return
        self._ping_due = True
        self._write(wire.PINGREQ_PACKET)
        self._keepalive = self._loop.call_later(self._keepalive_s / 2, self._ping)
