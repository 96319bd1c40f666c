"""One simulated air purifier speaking the device wire contract (CONTRACT section 1) over MQTT 3.1.1.

It logs in as its device id, leaves a retained Will "offline" on `device/{id}/status`, announces
"online" there (retained) on every connect, publishes a reading on `device/{id}/data` every
`interval` seconds, and runs commands from `device/{id}/command`, answering on `device/{id}/ack`.
When the broker is unreachable or drops it, it reconnects forever with exponential back-off and
jitter. `run()` runs until cancelled (or until `stop()`); a clean stop publishes "offline" itself
before the MQTT DISCONNECT, since a clean disconnect suppresses the Will.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

import aiomqtt

from firmware_sim.purifier_model import PurifierModel

log = logging.getLogger("firmware_sim.purifier")

STATUS_ONLINE: Final = "online"
STATUS_OFFLINE: Final = "offline"
# How long a clean stop waits for the broker to take the "offline" status.
_STOP_PUBLISH_TIMEOUT: Final = 3.0


def _checkpoint() -> None:
    """Raise CancelledError if a cancel of the current task was swallowed.

    On Python 3.11, `asyncio.wait_for` (used by aiomqtt for every publish, subscribe and CONNACK)
    returns the result instead of raising when the cancel arrives in the same loop iteration as the
    PUBACK (CPython gh-86296, fixed in 3.12). The cancel is still counted by `Task.cancelling()`, so
    we look after each aiomqtt call; without this a cancelled purifier could run on forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def topic_for(device_id: str, kind: str) -> str:
    """`device/{id}/{kind}` with kind one of data, ack, status, command."""
    return f"device/{device_id}/{kind}"


class SimulatedPurifier:
    """One purifier on one MQTT connection. Counters are plain attributes, read them freely."""

    def __init__(
        self,
        *,
        device_id: str,
        password: str | None,
        host: str = "127.0.0.1",
        port: int = 1883,
        interval: float = 120.0,
        keepalive: int = 30,
        qos: int = 1,
        tls_ca: str | None = None,
        seed: int | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self.device_id = device_id
        self._clock = clock  # the device's own clock (NTP-synchronised in the field): stamps its readings
        self.host = host
        self.port = port
        self.interval = interval
        self.keepalive = keepalive
        self.qos = qos
        self._password = password
        self._tls_ca = tls_ca
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._jitter = random.Random(None if seed is None else seed ^ 0x5EED)
        self.model = PurifierModel(seed=seed)
        self.topic_data = topic_for(device_id, "data")
        self.topic_ack = topic_for(device_id, "ack")
        self.topic_status = topic_for(device_id, "status")
        self.topic_command = topic_for(device_id, "command")

        # Counters for tests and the CLI summary.
        self.connected: bool = False
        self.connects: int = 0  # successful CONNACKs
        self.reconnects: int = 0  # successful connects after the first one
        self.connect_failures: int = 0  # attempts that did not get a session
        self.disconnects: int = 0  # sessions lost without us asking
        self.published: int = 0  # readings the broker took
        self.acked: int = 0  # acks the broker took
        self.commands_received: int = 0

        self._connected_event = asyncio.Event()
        self._changed = asyncio.Event()  # replaced after each change; see wait_for()
        self._stop_event = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._last_step: float | None = None

    # ----------------------------------------------------------------- public

    async def wait_connected(self) -> None:
        """Return once a session is up (immediately if it already is)."""
        await self._connected_event.wait()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; it is checked after each change of state or counter.

        No timeout of its own: wrap it in `asyncio.timeout()`.
        """
        while True:
            changed = self._changed
            if predicate():
                return
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def stop(self) -> None:
        """Ask `run()` to publish "offline", disconnect cleanly and return."""
        self._stop_event.set()

    def abort_connection(self) -> bool:
        """Test hook: drop the TCP connection without an MQTT DISCONNECT, as a power cut would.

        The broker then publishes the Will; the simulator notices and reconnects with back-off.
        Returns False when there is no connection to drop.
        """
        client = self._client
        if client is None or not self.connected:
            return False
        # aiomqtt has no public handle on the socket; its paho client has one.
        sock = client._client.socket()
        if not isinstance(sock, socket.socket):  # None, or a websocket wrapper
            return False
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # FIN to the broker; paho then reads EOF
        return True

    async def run(self) -> None:
        """Connect, serve, reconnect forever. Returns after `stop()`; a cancel stops cleanly too."""
        failures = 0
        while not self._stop_event.is_set():
            client = self._make_client()
            session_started = False
            try:
                async with client:
                    session_started = True
                    self._on_connected(failures)
                    failures = 0
                    await self._session(client)
                    return  # _session returns only on stop()
            except aiomqtt.MqttError as exc:
                if session_started:
                    self.disconnects += 1
                    self._notify()
                    log.warning("%s: disconnected: %s", self.device_id, exc)
                else:
                    self.connect_failures += 1
                    self._notify()
                    level = logging.WARNING if failures == 0 else logging.DEBUG
                    log.log(level, "%s: cannot connect to %s:%d: %s", self.device_id, self.host, self.port, exc)
            finally:
                self._on_disconnected()
            delay = self._backoff(failures)
            failures += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop_event.wait()

    # ---------------------------------------------------------------- internals

    def _backoff(self, failures: int) -> float:
        """Exponential back-off with "equal jitter": a delay in [cap/2, cap]."""
        cap = min(self._backoff_max, self._backoff_initial * (2.0 ** min(failures, 30)))
        return cap / 2 + self._jitter.uniform(0.0, cap / 2)

    def _make_client(self) -> aiomqtt.Client:
        tls_context = ssl.create_default_context(cafile=self._tls_ca) if self._tls_ca else None
        return aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.device_id,
            username=self.device_id,
            password=self._password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            keepalive=self.keepalive,
            timeout=self._connect_timeout,
            will=aiomqtt.Will(self.topic_status, STATUS_OFFLINE, qos=1, retain=True),
            tls_context=tls_context,
            # paho leaves Nagle on, which adds tens of ms to small publishes.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    def _on_connected(self, failures: int) -> None:
        self.connected = True
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        self._connected_event.set()
        self._notify()
        if failures:
            log.info(
                "%s: connected to %s:%d after %d failed attempt(s)", self.device_id, self.host, self.port, failures
            )
        else:
            log.info("%s: connected to %s:%d", self.device_id, self.host, self.port)

    def _on_disconnected(self) -> None:
        self.connected = False
        self._connected_event.clear()
        self._client = None
        self._notify()

    async def _session(self, client: aiomqtt.Client) -> None:
        """One connected session; returns on stop(), raises MqttError when the session is lost."""
        self._client = client
        tasks: list[asyncio.Task[Any]] = []
        try:
            _checkpoint()  # the CONNACK wait may have swallowed a cancel
            await client.publish(self.topic_status, STATUS_ONLINE, qos=1, retain=True)
            _checkpoint()
            await client.subscribe(self.topic_command, qos=1)
            _checkpoint()
            tasks = [
                asyncio.create_task(self._publish_loop(client), name=f"{self.device_id}-publish"),
                asyncio.create_task(self._command_loop(client), name=f"{self.device_id}-commands"),
                asyncio.create_task(self._stop_event.wait(), name=f"{self.device_id}-stop"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            await self._cancel(tasks)
            await self._publish_offline(client)
            raise
        await self._cancel(tasks)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error  # an MqttError: the session is lost
        # Only the stop task ends without an error.
        await self._publish_offline(client)

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
        """Cancel and reap the tasks; cancel again any that swallowed it (see `_checkpoint`)."""
        pending = {task for task in tasks if not task.done()}
        while pending:
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        for task in tasks:  # retrieve results so no "exception was never retrieved" warnings
            if not task.cancelled():
                task.exception()

    async def _publish_offline(self, client: aiomqtt.Client) -> None:
        """Clean stop: say "offline" ourselves (a clean DISCONNECT does not fire the Will)."""
        try:
            async with asyncio.timeout(_STOP_PUBLISH_TIMEOUT):
                await client.publish(self.topic_status, STATUS_OFFLINE, qos=1, retain=True)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("%s: could not publish offline status on stop: %s", self.device_id, exc)
        else:
            log.info("%s: stopped, status offline", self.device_id)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            now_mono = loop.time()
            if self._last_step is not None:
                self.model.step(now_mono - self._last_step)
            self._last_step = now_mono
            payload = json.dumps(self.model.reading(self._clock()), separators=(",", ":"))
            await client.publish(self.topic_data, payload, qos=self.qos)
            self.published += 1
            self._notify()
            _checkpoint()
            next_at += self.interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (slow broker): skip the missed slots, keep the cadence
                next_at = loop.time() + self.interval
                delay = self.interval
            await asyncio.sleep(delay)

    async def _command_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            self.commands_received += 1
            self._notify()
            ack = self._handle_command(message.payload)
            await client.publish(self.topic_ack, json.dumps(ack, separators=(",", ":")), qos=1)
            self.acked += 1
            self._notify()
            _checkpoint()

    def _handle_command(self, payload: Any) -> dict[str, Any]:
        try:
            if isinstance(payload, bytes | bytearray):
                payload = payload.decode("utf-8")
            cmd = json.loads(payload) if isinstance(payload, str) else payload
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("%s: command is not JSON: %s", self.device_id, exc)
            return self._error_ack(None, f"command is not JSON: {exc}")
        if not isinstance(cmd, dict):
            return self._error_ack(None, "command is not a JSON object")
        ack = self.model.apply_command(cmd)
        log.info("%s: command %s %s -> %s", self.device_id, cmd.get("action"), cmd.get("value"), ack["status"])
        return ack

    def _error_ack(self, command_id: object, reason: str) -> dict[str, Any]:
        return {"commandId": command_id, "status": "error", "state": self.model.state(), "error": reason}
