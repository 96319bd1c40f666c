"""The gateway's own client on the managed Mosquitto: it takes what devices publish, QoS 1, persistent session.

paho-mqtt runs on the daemon's event loop (its socket watched with add_reader/add_writer, no thread), with
manual acknowledgements: a message is handed to the BrokerSink, and its PUBACK goes to Mosquitto only when
the sink's receipt is done (the store committed it). What was never acknowledged stays in the session
Mosquitto keeps for us and comes again when it resumes (after a restart of either side). Messages are
handed over one at a time in arrival order. When the store falls behind, the client stops reading its socket
once INCOMING_MAX messages wait (Mosquitto's `max_inflight_messages` did not hold it back): the rest wait in
Mosquitto's queue for our session, unparsed, and the CPU goes to the store and the cloud link.
"""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.broker.mosquitto.config_files import IngestEndpoint
from gateway.core.ports import BrokerSink
from gateway.core.topics import DEVICE_PUBLISH_CHANNELS, device_topic

log = structlog.get_logger(__name__)

SUBSCRIPTIONS = [(device_topic("+", channel), 1) for channel in sorted(DEVICE_PUBLISH_CHANNELS)]
_KEEPALIVE = 30
_PREFIX = len("device/")
_READS_PER_TURN = 64
_HANDED_PER_TURN = 16  # messages handed to the sink before the consumer lets other tasks run
# Messages read and not yet handed to the sink: past this the socket is not read until half are handed over.
# Mosquitto kept sending far past its max_inflight_messages (measured: 10,000 held, each parsed by paho while
# the store took 50/s); unread, they wait in Mosquitto's queue for us (max_queued_messages) and TCP holds it back.
INCOMING_MAX = 256


class IngestClientError(RuntimeError):
    """The client could not log in or subscribe, or lost its connection."""


class IngestClient:
    def __init__(self, endpoint: IngestEndpoint, *, username: str, password: str, sink: BrokerSink) -> None:
        self._endpoint = endpoint
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=username, clean_session=False, protocol=mqtt.MQTTv311,
            transport="unix" if endpoint.socket_path is not None else "tcp", manual_ack=True,
            reconnect_on_failure=False,
        )
        client.username_pw_set(username, password)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._client = client
        # (connection number, mid, qos, topic, payload): a mid is acknowledged only on the connection it came on
        self._incoming: deque[tuple[int, int, int, str, bytes]] = deque()
        self._connection = 0
        self._wake = asyncio.Event()
        self._waiter: asyncio.Future[Any] | None = None  # CONNACK or SUBACK awaited
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._misc: asyncio.Task[None] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._receipt: asyncio.Future[None] | None = None  # the receipt the newest batch of mids waits on
        self._batch: list[int] = []
        self._batch_connection = 0
        self._refusing = False  # a receipt failed: no more PUBACKs on this connection (Mosquitto resends)
        self._intake_open = True
        self._sock: Any = None  # the connection's socket while the event loop reads it (None: not reading)
        self._unread: Any = None  # the socket while reading it is paused (INCOMING_MAX)
        self.connected = False

    # --- life ---------------------------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        """Log in (and subscribe, when Mosquitto kept no session for us); raises IngestClientError."""
        self._lost = self._loop.create_future()
        self._connection += 1
        self._refusing = False
        self._receipt, self._batch = None, []
        self._waiter = self._loop.create_future()
        ep = self._endpoint
        try:
            host, port = (str(ep.socket_path), 1) if ep.socket_path is not None else ("127.0.0.1", ep.port)
            self._client.connect(host, port, _KEEPALIVE)  # loopback or a unix socket: connects at once
            async with asyncio.timeout(timeout):
                session_present = await self._waiter
                if not session_present:
                    self._waiter = self._loop.create_future()
                    self._client.subscribe(SUBSCRIPTIONS)
                    await self._waiter
        except (OSError, TimeoutError, IngestClientError) as exc:
            self._client.disconnect()
            raise IngestClientError(f"gateway client on Mosquitto: {exc}") from exc
        finally:
            self._waiter = None
        self.connected = True
        if self._consumer is None:
            self._consumer = self._loop.create_task(self._consume(), name="mosquitto-ingest")

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
        if self.connected:
            self._client.disconnect()  # queued after the PUBACKs: they go first
            try:
                async with asyncio.timeout(2):
                    await self.wait_lost()
            except TimeoutError:
                log.warning("mosquitto.ingest_close_slow")

    def publish(self, topic: str, payload: bytes) -> None:
        if not self.connected:
            raise IngestClientError("not connected to Mosquitto")
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise IngestClientError(f"publish failed: {mqtt.error_string(info.rc)}")

    # --- messages -----------------------------------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self._incoming.append((self._connection, message.mid, message.qos, message.topic, bytes(message.payload)))
        self._wake.set()

    async def _consume(self) -> None:
        incoming, sink = self._incoming, self._sink
        run = 0
        while True:
            if not incoming or not self._intake_open:
                self._wake.clear()
                await self._wake.wait()
                continue
            if run >= _HANDED_PER_TURN:
                # A full in-flight window is handed over without a wait while the store has room: let the
                # uplink and the store writer run between bursts, as the embedded broker's readers do.
                run = 0
                await asyncio.sleep(0)
                continue  # (a lost connection may have emptied `incoming` meanwhile)
            run += 1
            connection, mid, qos, topic, payload = incoming.popleft()
            if self._unread is not None and len(incoming) <= INCOMING_MAX // 2:
                self._read_again()
            # Only device/+/{channel} is subscribed, and the ACL lets only device {id} publish to device/{id}/...
            device_id = topic[_PREFIX:topic.index("/", _PREFIX)]
            receipt = await sink.message(device_id, topic, payload)
            if qos == 0:
                continue
            if receipt is None:
                self._ack(connection, [mid])
            elif receipt is self._receipt and connection == self._batch_connection:
                self._batch.append(mid)  # one callback per store commit, not per message
            else:
                self._receipt, self._batch, self._batch_connection = receipt, [mid], connection
                receipt.add_done_callback(partial(self._settle, connection, self._batch))

    def _settle(self, connection: int, mids: list[int], receipt: asyncio.Future[None]) -> None:
        if connection != self._connection:
            return  # that connection is gone: Mosquitto sends these again on the current one
        if receipt.cancelled() or receipt.exception() is not None:
            # Not stored: no PUBACK for these nor any later one on this connection. Mosquitto sends them
            # again when the session resumes; while intake runs, reconnect for that.
            if not self._refusing and self._intake_open and self.connected:
                log.warning("mosquitto.ingest_not_stored", reconnecting=True)
                self._client.disconnect()
            self._refusing = True
            return
        self._ack(connection, mids)

    def _ack(self, connection: int, mids: list[int]) -> None:
        if self._refusing or not self.connected or connection != self._connection:
            return
        ack = self._client.ack
        for mid in mids:
            ack(mid, 1)

    # --- paho callbacks -----------------------------------------------------------------------------

    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags, reason: Any, _p: Any) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if reason.is_failure:
            waiter.set_exception(IngestClientError(f"login refused: {reason}"))
        else:
            waiter.set_result(flags.session_present)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if any(r.is_failure for r in reasons):
            waiter.set_exception(IngestClientError(f"subscription refused: {reasons}"))
        else:
            waiter.set_result(True)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected = False
        self._incoming.clear()  # unacknowledged: Mosquitto sends them again on the next connection
        if not self._lost.done():
            self._lost.set_result(None)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(IngestClientError(f"disconnected: {reason}"))

    def _on_socket_open(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._sock, self._unread = sock, None
        self._loop.add_reader(sock, self._readable)
        if self._misc is None or self._misc.done():
            self._misc = self._loop.create_task(self._misc_loop(client), name="mosquitto-ingest-keepalive")

    def _readable(self) -> None:
        """paho reads one packet per loop_read(): read on while each call brings a message, up to a bound, so
        a busy socket costs one event-loop turn per batch of messages, not per message."""
        client, incoming = self._client, self._incoming
        for _ in range(_READS_PER_TURN):
            before = len(incoming)
            client.loop_read()
            if len(incoming) == before or not self.connected:
                return
            if len(incoming) >= INCOMING_MAX and self._sock is not None:
                # The store is behind: stop parsing what it cannot take yet (the CPU goes to the store and the
                # cloud link); the consumer reads on once it has handed half of these over.
                self._loop.remove_reader(self._sock)
                self._sock, self._unread = None, self._sock
                return

    def _read_again(self) -> None:
        self._sock, self._unread = self._unread, None
        self._loop.add_reader(self._sock, self._readable)

    def _on_socket_close(self, _client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._sock = self._unread = None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if self._misc is not None:
            self._misc.cancel()

    def _on_register_write(self, client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, _client: mqtt.Client, _u: Any, sock: Any) -> None:
        self._loop.remove_writer(sock)

    @staticmethod
    async def _misc_loop(client: mqtt.Client) -> None:
        """paho's keepalive pings and timeouts, once a second (its own loop would be a thread)."""
        while True:
            if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            await asyncio.sleep(1)

