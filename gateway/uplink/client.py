"""The uplink: drains the outbox to the cloud broker, live data first, the backlog beside it.

An outbox row is deleted only after the PUBACK of the message that carried it, and a slot of the
in-flight window is freed only once that deletion is committed: after a crash at most `inflight`
messages are sent again, always with the same msgId.

Each connection splits the outbox at the last seq committed when it came up: rows up to the split
are the backlog (read from SQLite, oldest first, within `backlog_share` of the window); rows
committed later are live (handed over by the store writer, sent at once). Live rows that do not fit
the bounded live queue are not lost: their seq ranges join the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import structlog

from gateway.core.clock import Clock
from gateway.core.metrics import Metrics
from gateway.core.models import OutboxDone, OutboxEntry
from gateway.core.registry import Change, DeviceRegistry
from gateway.settings import UplinkSection
from gateway.store.writer import StoreWriter
from gateway.uplink import acks, messages
from gateway.uplink.acks import AckTracker
from gateway.uplink.cancels import honour_cancel
from gateway.uplink.connect import cloud_client, describe, is_link_error
from gateway.uplink.outbox_reader import OutboxReader
from gateway.uplink.reachability import pause_before_reconnect
from gateway.uplink.rpc import Dispatcher
from gateway.uplink.rpc_server import RPC_CONCURRENCY, RpcServer

log = structlog.get_logger(__name__)

# Committed rows waiting for the live lane. Past it they join the backlog (read back from SQLite), so a
# bigger queue only holds more rows in memory during a burst: 250 is over 10 x the in-flight window.
LIVE_QUEUE_SIZE = 250
BACKLOG_REFRESH_S = 5.0  # how often the status lane re-reads the outbox's depth and oldest row
# Backlog rows read per query, one message each: 5 x the default in-flight window. A page is held until its
# last message is handed over, so a bigger one only holds more rows in memory while the link is busy.
BACKLOG_PAGE = 100
# What a published message holds until its PUBACK and its rows' deletion: the outbox seqs, the slots.
Sent = tuple[tuple[int, ...], list[asyncio.Semaphore]]


@dataclass
class UplinkState:
    """What the panel, /health and metrics show about the link."""

    connected: bool = False
    last_error: str | None = None
    reconnects: int = 0
    cloud_found_by_probe: int = 0  # back-offs ended early because the cloud accepted TCP again
    backlog: int = 0
    oldest_unsent_age: float | None = None
    last_sync_at: float | None = None  # the last PUBACK from the cloud (the panel's "last successful sync")


class Uplink:
    def __init__(
        self,
        settings: UplinkSection,
        *,
        gateway_id: str,
        org: str,
        db_path: Path,
        writer: StoreWriter,
        dispatcher: Dispatcher,
        registry: DeviceRegistry,
        metrics: Metrics,
        clock: Clock,
        version: str,
        started_at: float,
    ) -> None:
        acks.check_installed()  # paho's private names this uplink uses: at start-up, not at the first connection
        self._s = settings
        self._gateway_id = gateway_id
        self._topics = messages.Topics(org, gateway_id)
        self._writer = writer
        self._reader = OutboxReader(db_path)
        self._registry = registry
        self._devices_changed = asyncio.Event()
        self._metrics = metrics
        self._clock = clock
        self._version = version
        self._started_at = started_at
        self.state = UplinkState()
        self._live: asyncio.Queue[OutboxEntry] = asyncio.Queue(maxsize=LIVE_QUEUE_SIZE)
        self._accepting = False  # the live lane takes rows only while a connection is up
        self._overflow: deque[tuple[int, int]] = deque()  # seq ranges the live queue could not hold
        self._overflow_event = asyncio.Event()
        # Messages the cloud acknowledged, waiting for their rows' deletion (and then their slots' release).
        self._acked: list[Sent] = []
        self._acked_event = asyncio.Event()
        self._failing = False
        self._stopping = False
        self._client: aiomqtt.Client | None = None
        self._published_registry: tuple[tuple[Any, Any], ...] = ()
        # Requests being served, by JSON-RPC id: a redelivery of one (QoS 1 after a reconnect) waits for
        # the first execution's answer instead of executing again.
        self._rpc = RpcServer(dispatcher, answers=self._reader, writer=writer, respond=self._respond,
                              metrics=metrics, clock=clock)
        writer.on_outbox.append(self._on_outbox)
        # A device that comes, goes, or leaves the config: the retained device list follows at once.
        registry.subscribe(lambda _: self._devices_changed.set(), Change.PRESENCE, Change.DEVICES)
        metrics.gauge_callback("gateway_uplink_connected", lambda: float(self.state.connected), "cloud link up")
        metrics.gauge_callback("gateway_uplink_backlog_rows", lambda: float(self.state.backlog), "outbox rows")
        metrics.gauge_callback("gateway_outbox_oldest_unsent_age_seconds",
                               lambda: self.state.oldest_unsent_age or 0.0, "age of the oldest unsent outbox row")

    # --- from the store writer (synchronous, after each commit) ------------------------------------

    def _on_outbox(self, entries: Sequence[OutboxEntry]) -> None:
        if not self._accepting:
            return  # no connection: these rows are the next connection's backlog
        for entry in entries:
            try:
                self._live.put_nowait(entry)
            except asyncio.QueueFull:
                if self._overflow and self._overflow[-1][1] == entry.seq - 1:
                    self._overflow[-1] = (self._overflow[-1][0], entry.seq)
                else:
                    self._overflow.append((entry.seq, entry.seq))
                self._overflow_event.set()

    async def announce_offline(self, timeout: float = 1.0) -> None:
        """On an orderly stop the broker will not publish our Will: say "offline" ourselves."""
        client = self._client
        if client is None or not self.state.connected:
            return
        try:
            await asyncio.wait_for(
                client.publish(self._topics.status, self._status(False), qos=1, retain=True), timeout
            )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("uplink.offline_not_announced", error=str(exc))

    def stop(self) -> None:
        """Ask run() to end (the caller also cancels it). A flag, not only a cancellation: Python 3.11's
        wait_for, inside aiomqtt, can swallow a cancellation, and the loop would reconnect forever."""
        self._stopping = True

    # --- supervisor ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain, reconnect with jittered exponential back-off; never gives up, logs once per state."""
        await self._reader.open()
        backoff = 1.0
        try:
            while not self._stopping:
                try:
                    await self._connection()
                except (Exception, BaseExceptionGroup) as exc:  # the link must survive anything and say why
                    self.state.last_error = describe(exc)
                    if not self._failing:
                        log.warning("uplink.down", error=self.state.last_error, host=self._s.host, port=self._s.port)
                        self._failing = True
                    if not is_link_error(exc):
                        log.error("uplink.unexpected_error", exc_info=exc)
                self._accepting = False
                if self.state.connected:
                    self.state.connected = False
                    backoff = 1.0  # it was up: try again soon
                self.state.reconnects += 1
                self._metrics.inc("gateway_uplink_reconnects_total", 1, "cloud connection attempts after a loss")
                if self._stopping:
                    break
                woken = await pause_before_reconnect(
                    backoff * random.uniform(0.5, 1.0),  # jitter: no herd of gateways
                    self._s.host, self._s.port, probe_every=self._s.probe_interval_seconds,
                )
                if woken == "reachable":
                    self.state.cloud_found_by_probe += 1
                    log.info("uplink.cloud_reachable", host=self._s.host, port=self._s.port)
                backoff = min(backoff * 2, self._s.reconnect_max_seconds)
        finally:
            await self._reader.close()

    async def _connection(self) -> None:
        client = cloud_client(self._s, self._gateway_id, will_topic=self._topics.status,
                              will_payload=self._status(False), extra_pending_calls=RPC_CONCURRENCY)
        async with client:
            self._client = client
            split = self._writer.last_seq
            self._live = asyncio.Queue(maxsize=LIVE_QUEUE_SIZE)
            self._overflow.clear()
            self._accepting = True
            self.state.last_error = None
            log.info("uplink.recovered" if self._failing else "uplink.up", host=self._s.host, port=self._s.port,
                     backlog_upto=split)
            self._failing = False
            await self._refresh_backlog()
            # Not honour_cancel here: this runs in the uplink's own task, whose cancel count Python 3.11's
            # TaskGroup leaves raised after a lane failed (it never calls uncancel() when the cancel reaches
            # it in __aexit__), so every reconnect would look cancelled. A swallowed cancel at stop is covered
            # by the stop flag and by the daemon cancelling again until the task ends.
            await client.publish(self._topics.status, self._status(True), qos=1, retain=True)
            await self._publish_devices(client, lane=False)
            await client.subscribe(self._topics.rpc_request, qos=1)
            # Connected = usable: status announced and the request topic subscribed (a request sent before
            # the first subscription of a new session would have nowhere to go).
            self.state.connected = True
            window = asyncio.Semaphore(self._s.inflight)
            backlog_slots = asyncio.Semaphore(max(1, int(self._s.inflight * self._s.backlog_share)))
            tracker: AckTracker[Sent] = AckTracker(client, self._acknowledged)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._live_lane(tracker, window), name="uplink-live")
                    tg.create_task(self._backlog_lane(tracker, window, backlog_slots, split), name="uplink-backlog")
                    tg.create_task(self._rpc_lane(client), name="uplink-rpc")
                    tg.create_task(self._status_lane(client), name="uplink-status")
                    tg.create_task(self._delete_lane(), name="uplink-delete")
            finally:
                if self._acked:  # acknowledged before the link went: delete them, or they go again (same msgId)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self._delete_acked(), 1.0)

    def _status(self, online: bool) -> bytes:
        return messages.status_payload(
            online=online, version=self._version, started_at=self._started_at, backlog=self.state.backlog
        )

    # --- sending --------------------------------------------------------------------------------------

    def _acknowledged(self, token: Sent) -> None:
        # PUBACK seen: the rows go, then the slots are free (a slot covers a message until its rows are
        # deleted for good, so a crash resends at most the in-flight window).
        self._acked.append(token)
        self._acked_event.set()
        self.state.last_sync_at = self._clock.now()

    async def _delete_lane(self) -> None:
        """Deletes acknowledged rows in groups: one store round trip per commit, not one per message."""
        while True:
            await self._acked_event.wait()
            self._acked_event.clear()
            await self._delete_acked()

    async def _delete_acked(self) -> None:
        acked, self._acked = self._acked, []
        if not acked:
            return
        seqs = tuple(seq for group, _ in acked for seq in group)
        try:
            # Ahead of what devices queued; under overload it paces them to what the cloud took (first_lane.py).
            await self._writer.put_first(OutboxDone(seqs), rows=len(seqs))
            self._metrics.inc("gateway_uplink_sent_total", len(seqs), "outbox rows acknowledged by the cloud")
        finally:
            for _, slots in acked:
                for slot in slots:
                    slot.release()

    async def _dispatch(
        self,
        tracker: AckTracker[Sent],
        entries: list[OutboxEntry],
        slots: list[asyncio.Semaphore],
    ) -> None:
        """Send entries as messages (batches when configured), each holding the given slots until deleted.
        The messages built go to the socket together: before any wait for a slot, and at the end."""
        for topic, payload, seqs in self._pack(entries):
            for slot in slots:
                if slot.locked():
                    tracker.flush()  # what waits for this slot's PUBACKs must be on its way first
                await slot.acquire()
            try:
                tracker.publish(topic, payload, (seqs, slots))
            except BaseException:
                for slot in slots:
                    slot.release()
                raise
        tracker.flush()  # raises if the link is down: the connection's task group ends and the supervisor reconnects

    def _pack(self, entries: list[OutboxEntry]) -> Iterator[tuple[str, bytes, tuple[int, ...]]]:
        """The messages for `entries`, each built when the one before it has been handed over (a page's
        messages all built at once would be held together while they wait for window slots)."""
        batch: list[OutboxEntry] = []
        size = 0
        for entry in entries:
            if self._s.batch and entry.kind == "telemetry":
                item = messages.batch_item_size(entry)
                if batch and (len(batch) >= self._s.batch_max_readings or size + item > self._s.batch_max_bytes):
                    yield (*messages.batch_message(self._topics, batch), tuple(e.seq for e in batch))
                    batch, size = [], 0
                batch.append(entry)
                size += item
                continue
            topic, payload = messages.entry_message(self._topics, entry)
            yield topic, payload, (entry.seq,)
        if batch:
            yield (*messages.batch_message(self._topics, batch), tuple(e.seq for e in batch))

    async def _live_lane(self, tracker: AckTracker[Sent], window: asyncio.Semaphore) -> None:
        live = self._live
        while True:
            entries = [await live.get()]
            limit = self._s.batch_max_readings if self._s.batch else 64
            while len(entries) < limit and not live.empty():
                entries.append(live.get_nowait())
            await self._dispatch(tracker, entries, [window])

    async def _backlog_lane(
        self,
        tracker: AckTracker[Sent],
        window: asyncio.Semaphore,
        slots: asyncio.Semaphore,
        split: int,
    ) -> None:
        ranges: deque[tuple[int, int]] = deque([(0, split)])
        # Batching: two batches' worth of rows per query (fewer, fuller batches), at most the old 500.
        page_size = min(2 * self._s.batch_max_readings, 500) if self._s.batch else BACKLOG_PAGE
        while True:
            if not ranges:
                await self._overflow_event.wait()
                self._overflow_event.clear()
                while self._overflow:
                    low, high = self._overflow.popleft()
                    ranges.append((low - 1, high))
                continue
            after, upto = ranges[0]
            page = await self._reader.fetch(after, upto, page_size)
            if not page:
                ranges.popleft()
                await self._refresh_backlog()
                continue
            ranges[0] = (page[-1].seq, upto)
            await self._dispatch(tracker, page, [slots, window])

    async def _status_lane(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()  # a refresh interval, not a domain time: the loop's clock
        backlog_due = loop.time() + BACKLOG_REFRESH_S
        while True:
            # Wakes the lane for the backlog refresh (a timer: no timeout context around the wait).
            due = loop.call_at(backlog_due, self._devices_changed.set)
            try:
                await self._devices_changed.wait()
            finally:
                due.cancel()
            self._devices_changed.clear()
            if self._registry_key() != self._published_registry:
                await self._publish_devices(client)
            if loop.time() >= backlog_due:
                backlog_due = loop.time() + BACKLOG_REFRESH_S
                await self._refresh_backlog()

    def _registry_key(self) -> tuple[tuple[Any, Any], ...]:
        return tuple((d["id"], d["online"]) for d in self._registry.summary())  # lastSeen alone is no news

    async def _publish_devices(self, client: aiomqtt.Client, *, lane: bool = True) -> None:
        devices = self._registry.summary()
        publish = client.publish(self._topics.devices, messages.devices_payload(devices), qos=1, retain=True)
        await (honour_cancel(publish) if lane else publish)
        self._published_registry = tuple((d["id"], d["online"]) for d in devices)

    async def _refresh_backlog(self) -> None:
        rows, oldest = await self._reader.backlog()
        self.state.backlog = rows
        self.state.oldest_unsent_age = None if oldest is None else max(0.0, self._clock.now() - oldest)

    # --- commands from the cloud ----------------------------------------------------------------------

    async def _rpc_lane(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if str(message.topic) != self._topics.rpc_request:
                continue
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            await self._rpc.take(payload)

    async def _respond(self, response: bytes) -> None:
        """Send a JSON-RPC answer on whatever connection is up when it is ready (none: the answer is stored,
        and a repeat of the request gets it)."""
        client = self._client
        if client is not None and self.state.connected:
            await honour_cancel(client.publish(self._topics.rpc_response, response, qos=1))

    async def cancel_requests(self) -> None:
        """At shutdown: stop serving requests still running (their commands stay in the audit log)."""
        await self._rpc.cancel_all()
