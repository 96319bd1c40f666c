"""The managed Mosquitto as the gateway's LanBroker (`broker.backend = "mosquitto"`).

The daemon writes Mosquitto's files into `<state dir>/mosquitto/` (0700, files 0600), runs it as a child,
and takes what devices publish through its own privileged client (ingest_client.py). Presence and command
readiness come from Mosquitto's connection log (connection_log.py). `run()` is supervised (LanBrokerLink):
if Mosquitto dies it raises, and the supervisor calls it again after its back-off, which starts Mosquitto
again (same ports, its persistent sessions and queued messages from its last save).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Mapping
from pathlib import Path

import structlog

from gateway.broker.mosquitto import config_files as files
from gateway.broker.mosquitto.child import MosquittoChild
from gateway.broker.mosquitto.connection_log import Connected, Ended, Subscribed, parse_line
from gateway.broker.mosquitto.ingest_client import IngestClient, IngestClientError
from gateway.core.links import LinkError
from gateway.core.metrics import Metrics
from gateway.core.passwords_mosquitto import hash_password_mosquitto
from gateway.core.ports import BrokerSink
from gateway.core.topics import command_topic, matches_filter
from gateway.settings_broker import BrokerSection

log = structlog.get_logger(__name__)

# The gateway's own password is random per start and 256 bits strong: a few iterations are enough.
_GATEWAY_HASH_ITERATIONS = 1000


class MosquittoExited(RuntimeError):
    """The Mosquitto child ended while the gateway runs."""


class MosquittoBroker:
    def __init__(
        self, broker: BrokerSection, devices: Mapping[str, str | None], *, sink: BrokerSink, metrics: Metrics,
        state_dir: Path,
    ) -> None:
        self._settings = broker
        self._devices = dict(devices)  # device id -> its Mosquitto PBKDF2 hash (None: anonymous only)
        self._sink = sink
        self._metrics = metrics
        self._dir = state_dir / "mosquitto"
        self._password = secrets.token_urlsafe(32)
        self._password_hash = hash_password_mosquitto(self._password, iterations=_GATEWAY_HASH_ITERATIONS)
        self._ports: list[int] = []
        self._ingest: IngestClient | None = None
        self._endpoint: files.IngestEndpoint | None = None
        self._child = MosquittoChild(broker.mosquitto.binary, self._dir / files.CONFIG_NAME, self._on_log_line,
                                     self._all_disconnected)
        self._clients: dict[str, str] = {}  # client id -> device (the username, else the client id): connected now
        self._command_ready: set[str] = set()
        self._started = asyncio.Event()
        self._stopping = False
        metrics.gauge_callback("gateway_broker_clients_connected", lambda: float(self.clients_connected()),
                               "MQTT clients connected to the LAN broker")

    @property
    def child(self) -> MosquittoChild:
        """The Mosquitto process (tests kill it)."""
        return self._child

    # --- LanBroker ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._dir.chmod(0o700)
        self._ports = [lst.port or _free_port(lst.host) for lst in self._settings.listeners]
        self._endpoint = files.ingest_endpoint(self._dir, _free_port("127.0.0.1"))
        if self._settings.mosquitto.persistence and not (self._dir / files.PERSISTENCE_NAME).exists():
            await self._create_ingest_session()
        self._write_files()
        await self._child.start()
        self._ingest = self._ingest_client()
        try:
            await self._connect_ingest(self._ingest)
        except IngestClientError:
            await self._child.stop()
            raise
        self._started.set()
        for lst, port in zip(self._settings.listeners, self._ports, strict=True):
            log.info("broker.listening", backend="mosquitto", listener=lst.name, host=lst.host, port=port,
                     tls=lst.tls, pid=self._child.pid)

    async def run(self) -> None:
        """Keep Mosquitto and the gateway's client up; raises when either went away (the supervisor restarts
        this, which brings them back)."""
        await self._started.wait()
        ingest = self._ingest
        assert ingest is not None
        if not self._child.running:
            await self._child.start()
            log.info("mosquitto.restarted", pid=self._child.pid)
        if not ingest.connected:
            await self._connect_ingest(ingest)
        exited = asyncio.ensure_future(self._child.wait())
        lost = asyncio.ensure_future(ingest.wait_lost())
        try:
            await asyncio.wait({exited, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            lost.cancel()
        if exited.done() and not exited.cancelled():
            tail = " | ".join(self._child.last_lines)
            raise MosquittoExited(f"mosquitto exited with status {exited.result()}: {tail}")
        raise IngestClientError("the gateway's client lost its connection to Mosquitto")

    async def stop_intake(self) -> None:
        self._stopping = True
        if self._ingest is not None:
            self._ingest.stop_intake()

    async def shutdown(self) -> None:
        self._stopping = True
        if self._ingest is not None:
            await self._ingest.close()
        await self._child.stop()

    async def send(self, device_id: str, payload: bytes) -> None:
        if self._ingest is None:
            raise LinkError("Mosquitto is not running")
        try:
            self._ingest.publish(command_topic(device_id), payload)
        except IngestClientError as exc:
            raise LinkError(str(exc)) from exc

    def command_ready(self, device_id: str) -> bool:
        return device_id in self._command_ready

    def clients_connected(self) -> int:
        return len(self._clients)

    def update_devices(self, devices: Mapping[str, str | None], *, allow_anonymous: bool) -> None:
        self._devices = dict(devices)
        self._settings = self._settings.model_copy(update={"allow_anonymous": allow_anonymous})
        if self._started.is_set():
            self._write_files()
            self._child.reload()

    def bound_ports(self) -> list[int]:
        return list(self._ports)

    # --- files and log ------------------------------------------------------------------------------

    def _write_files(self, *, device_listeners: bool = True) -> None:
        assert self._endpoint is not None
        s, folder = self._settings, self._dir
        files.write_private(folder / files.PASSWORDS_NAME, files.password_file(self._devices, self._password_hash))
        files.write_private(folder / files.ACL_NAME, files.acl_file(self._devices, allow_anonymous=s.allow_anonymous))
        files.write_private(folder / files.CONFIG_NAME, files.mosquitto_conf(
            s, folder, self._endpoint, self._ports, device_listeners=device_listeners))

    # --- the gateway's session ----------------------------------------------------------------------

    def _ingest_client(self) -> IngestClient:
        assert self._endpoint is not None
        return IngestClient(self._endpoint, username=files.GATEWAY_USER, password=self._password, sink=self._sink)

    async def _create_ingest_session(self) -> None:
        """A new state dir: Mosquitto holds no session for the gateway yet, and a device's message that comes
        before our subscription is acknowledged by Mosquitto and dropped (no subscriber). So Mosquitto first
        runs with the gateway's listener only: our client subscribes, and the stop (SIGTERM) saves the session
        with its subscriptions; device listeners open only on top of it."""
        self._write_files(device_listeners=False)
        await self._child.start()
        client = self._ingest_client()
        try:
            await client.connect()
            await client.close()  # a DISCONNECT: Mosquitto keeps the session (not a clean one)
        finally:
            await self._child.stop()
        log.info("mosquitto.ingest_session_created", file=str(self._dir / files.PERSISTENCE_NAME))

    async def _connect_ingest(self, ingest: IngestClient) -> None:
        if not await ingest.connect() and self._settings.mosquitto.persistence:
            # Expired (the gateway away longer than session_expiry_seconds) or its file lost: what devices
            # published since, Mosquitto acknowledged and dropped.
            log.warning("mosquitto.ingest_session_lost", action="subscribed again")

    async def _on_log_line(self, line: str) -> None:
        event = parse_line(line)
        if isinstance(event, Connected):
            if event.device == files.GATEWAY_USER:
                return
            self._clients[event.client_id] = event.device
            if event.clean_session:
                self._command_ready.discard(event.device)
            await self._sink.connection(event.device, True)
            if not event.clean_session:
                # A resumed persistent session keeps its subscriptions and Mosquitto logs none for them:
                # taken as subscribed to its commands (CONTRACT devices subscribe; a command sent to one that
                # did not is retried at its deadline).
                await self._subscribed(event.device, command_topic(event.device))
        elif isinstance(event, Ended):
            device = self._clients.pop(event.client_id, None)
            if device is not None:
                self._command_ready.discard(device)
                await self._sink.connection(device, False)
        elif isinstance(event, Subscribed):
            device = self._clients.get(event.client_id)
            if device is not None:
                await self._subscribed(device, event.topic_filter)
        elif line.startswith(("Error", "Warning")) and "should not be run as root" not in line:
            log.warning("mosquitto.log", line=line)

    async def _subscribed(self, device: str, topic_filter: str) -> None:
        if matches_filter(command_topic(device), topic_filter):
            self._command_ready.add(device)
        await self._sink.subscribed(device, topic_filter)

    async def _all_disconnected(self) -> None:
        """Mosquitto is gone, and every connection with it."""
        if self._stopping:
            return
        devices = set(self._clients.values())
        self._clients.clear()
        self._command_ready.clear()
        for device in devices:
            await self._sink.connection(device, False)


def _free_port(host: str) -> int:
    """A port free now, for a listener configured with port 0 (Mosquitto cannot report one it picked)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
