"""Composition root: builds the services from Settings, runs them in one TaskGroup, stops them in order."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, time
from typing import TYPE_CHECKING, Any

import structlog

from drivers import registry as driver_registry
from gateway import __version__, demo_credentials
from gateway.broker import create_lan_broker, device_logins
from gateway.broker.device_link import LanBrokerLink
from gateway.cloud_methods import register_control_methods, register_gateway_methods, register_history_methods
from gateway.control.service import Controller
from gateway.core.clock import Clock, SystemClock
from gateway.core.device_drivers import DeviceDrivers
from gateway.core.errors import ConfigError, StartupError
from gateway.core.links import DeviceLink, DeviceLinks
from gateway.core.metrics import Metrics
from gateway.core.models import OutboxPrune, StatusChange
from gateway.core.registry import DeviceRegistry
from gateway.core.supervisor import Health, Supervisor
from gateway.core.tasks import cancel_until_done
from gateway.hub_wiring import build_hub_intake, hub_maps, restore_hub_batches
from gateway.ingest.mqtt_intake import MqttIntake
from gateway.ingest.resends import PER_DEVICE
from gateway.ingest.service import Ingest
from gateway.logs import configure_logging
from gateway.loop_lag import measure_loop_lag
from gateway.malloc_tuning import trim_periodically
from gateway.modbus_setup import build_modbus_link
from gateway.settings import LoadedSettings, Settings, load_settings
from gateway.store.checkpoints import BACKSTOP_PAGES, WalCheckpointer
from gateway.store.history import LazyReader
from gateway.store.lifecycle import DataLifecycle
from gateway.store.queries import load_device_states, load_recent_readings
from gateway.store.writer import StoreWriter
from gateway.systemd_notify import SystemdNotifier
from gateway.uplink.rpc import Dispatcher
from gateway.web.views import device_state_json

if TYPE_CHECKING:
    from drivers.ble.hub_adverts import BleAdvertDecoder
    from drivers.ble.link import BleBackends, BleLink
    from gateway.uplink.client import Uplink
    from gateway.web.server import ApiServer


log = structlog.get_logger(__name__)

SHUTDOWN_BUDGET_S = 5.0


class Gateway:
    """One running gateway. `run()` returns after `stop()` (or SIGTERM/SIGINT) once everything is closed."""

    def __init__(self, loaded: LoadedSettings, *, clock: Clock | None = None, notifier: SystemdNotifier | None = None,
                 ble_backends: BleBackends | None = None, demo: bool = False):
        # The demo's published credentials are refused outside `edge-gateway demo` (at start and on reload).
        self._demo = demo
        demo_credentials.check_allowed(loaded, demo=demo)
        self.loaded = loaded
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        self.notifier = notifier or SystemdNotifier()
        self._stop = asyncio.Event()
        self._broker_started = False
        self.ready = asyncio.Event()
        s = loaded.settings
        self.writer = StoreWriter(
            loaded.db_path,
            metrics=self.metrics,
            commit_interval=s.storage.commit_interval_ms / 1000.0,
            max_batch=s.storage.max_batch,
            queue_size=s.storage.queue_size,
            synchronous=s.storage.synchronous,
            idle_linger=s.storage.idle_linger_ms / 1000.0,
            outbox=s.uplink.enabled,
            clock=self.clock,
            wal_autocheckpoint=BACKSTOP_PAGES,  # checkpoints run beside it (self.checkpointer)
        )
        kinds = s.device_kinds()
        self.registry = DeviceRegistry(kinds)
        self.device_drivers = DeviceDrivers(self.registry, driver_registry.load_all(kinds.values()))
        self.supervisor = Supervisor(clock=self.clock, metrics=self.metrics)
        self.lifecycle = DataLifecycle(s.retention, put=self.writer.put, clock=self.clock, metrics=self.metrics)
        self.history_reader = LazyReader(loaded.db_path)  # the cloud's history calls
        self.checkpointer = WalCheckpointer(loaded.db_path, metrics=self.metrics)
        self.ingest = Ingest(
            put=self.writer.put, receipt=self.writer.receipt, metrics=self.metrics, clock=self.clock,
            registry=self.registry,
            earliest_ts=datetime.combine(s.ingest.earliest_timestamp, time(), UTC).timestamp(),
            max_future_s=s.ingest.max_future_minutes * 60.0,
        )
        # The BLE devices' advert decoders, one instance for the gateway's own scanner and the hub demultiplexer
        # (the repeat and replay state is shared); bleak is imported only when the gateway's radio is used.
        self.ble_adverts: BleAdvertDecoder | None = None
        self.ble: BleLink | None = None
        if s.ble.devices:
            from drivers.ble.wiring import build_ble

            self.ble_adverts, self.ble = build_ble(s.ble, radio=s.ble.radio, intake=self.ingest, clock=self.clock,
                                                   metrics=self.metrics, supervisor=self.supervisor,
                                                   backends=ble_backends)
        # Hub batches (CONTRACT section 3): relayed adverts go through the same decoders as the gateway's own
        # radio; with no BLE devices configured they count as unmapped.
        self.hubs = build_hub_intake(s.hubs, ingest=self.ingest, put=self.writer.put, registry=self.registry,
                                     driver_of=self.device_drivers.of, decoder=self.ble_adverts, clock=self.clock,
                                     metrics=self.metrics)
        self.mqtt_intake = MqttIntake(
            intake=self.ingest, driver_of=self.device_drivers.mqtt_of, metrics=self.metrics, clock=self.clock,
            max_json_depth=s.ingest.max_json_depth, batches=self.hubs.part,
        )
        self.broker = create_lan_broker(s.broker, s.devices, sink=self.mqtt_intake, metrics=self.metrics,
                                        state_dir=loaded.data_dir)
        self._broker_backend = s.broker.backend  # what runs until a restart, whatever a reload says
        links: dict[str, DeviceLink] = {
            "mqtt": LanBrokerLink(run=self.broker.run, send=self.broker.send,
                                  command_ready=self.broker.command_ready, driver_of=self.device_drivers.mqtt_of)}
        modbus = build_modbus_link(s.modbus, loaded.path.parent, intake=self.ingest, clock=self.clock,
                                   metrics=self.metrics, supervisor=self.supervisor)
        if modbus is not None:
            links["modbus"] = modbus
        if self.ble is not None:
            links["ble"] = self.ble
        self.links = DeviceLinks(links, transport_of=self.device_drivers.transport_of)
        self.controller = Controller(
            s.control,
            timezone=s.gateway.timezone,
            clock=self.clock,
            put=self.writer.put,
            registry=self.registry,
            links=self.links,
            acks=self.ingest,
            metrics=self.metrics,
            check_command=self.device_drivers.check_command,
        )
        self.api: ApiServer | None = None
        self.started_at = self.clock.now()
        self.uplink: Uplink | None = None
        if s.uplink.enabled:
            from gateway.uplink.client import Uplink  # aiomqtt costs RSS: only when a cloud is configured

            self.uplink = Uplink(
                s.uplink,
                gateway_id=s.gateway.id,
                org=s.gateway.org,
                db_path=loaded.db_path,
                writer=self.writer,
                dispatcher=self._rpc_methods(),
                registry=self.registry,
                metrics=self.metrics,
                clock=self.clock,
                version=__version__,
                started_at=self.started_at,
            )

    def _rpc_methods(self) -> Dispatcher:
        """The cloud's JSON-RPC methods (CONTRACT section 2)."""
        dispatcher = Dispatcher()
        register_gateway_methods(dispatcher, now=self.clock.now, version=__version__, devices=self.registry.summary,
                                 device_state=self.device_state)
        s = self.settings.control
        register_control_methods(
            dispatcher, self.controller, wait_seconds=s.command_timeout_seconds * s.command_attempts + 5.0
        )
        register_history_methods(dispatcher, self.history_reader, known=self.controller.known, now=self.clock.now,
                                 retention=self.settings.retention)
        return dispatcher

    def device_state(self, device_id: str) -> dict[str, Any] | None:
        """The state page of one configured device (None for any other id)."""
        if self.registry.kind(device_id) is None:
            return None
        return device_state_json(device_id, self.registry.get(device_id))

    def health(self) -> dict[str, Any]:
        """GET /health: is every part running, and how far behind is the store (and the cloud)."""
        uplink = None
        if self.uplink is not None:
            u = self.uplink.state
            uplink = {"connected": u.connected, "backlog": u.backlog, "lastError": u.last_error,
                      "reconnects": u.reconnects, "oldestUnsentAge": u.oldest_unsent_age}
        return {
            "status": "ok" if self.ready.is_set() and not self._stop.is_set() else "starting-or-stopping",
            "version": __version__,
            "gatewayId": self.settings.gateway.id,
            "uptimeSeconds": round(self.clock.now() - self.started_at, 3),
            "devices": len(self.registry.configured()),
            "devicesOnline": self.registry.online_count(),
            "links": self.supervisor.report(),
            "storeQueue": self.writer.queue_depth,
            "readingsCommitted": self.metrics.value("gateway_readings_committed_total"),
            "uplink": uplink,
        }

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> bool:
        """SIGHUP: read the config again; apply it whole, or keep the old one and say why."""
        self.notifier.reloading()
        try:
            new = load_settings(self.loaded.path)
            demo_credentials.check_allowed(new, demo=self._demo)
        except ConfigError as exc:
            log.error("config.reload_rejected", errors=exc.errors, kept="previous configuration")
            self.metrics.inc("gateway_config_reloads_total", 1, "config reloads", result="rejected")
            self.notifier.ready("running (config reload rejected)")
            return False
        old = self.loaded.settings
        s = new.settings
        self.broker.update_devices(device_logins(s.devices, self._broker_backend),
                                   allow_anonymous=s.broker.allow_anonymous)
        kinds = s.device_kinds()
        for kind in set(kinds.values()) - set(self.device_drivers.by_kind):
            self.device_drivers.by_kind[kind] = driver_registry.load(kind)
        self.registry.set_devices(kinds)  # control and the uplink follow its change event
        self.hubs.set_maps(hub_maps(s.hubs))
        if s.logging != old.logging:
            configure_logging(s.logging.level, s.logging.format)
        needs_restart = s.restart_needed_for(old)
        if (s.broker.backend, s.broker.mosquitto) != (self._broker_backend, old.broker.mosquitto):
            needs_restart.append("broker.backend")
        self.loaded = new
        self.metrics.inc("gateway_config_reloads_total", 1, "config reloads", result="applied")
        log.info("config.reloaded", devices=len(s.devices), restart_needed_for=needs_restart or None)
        self.notifier.ready("running")
        return True

    async def run(self, *, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self._run()
        finally:
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)

    async def _run(self) -> None:
        try:
            conn = await self.writer.open()
            self.registry.restore((await load_device_states(conn)).values())
            # A device resending what it sent before a crash or restart is recognised (ingest/resends.py).
            self.ingest.recent.restore(await load_recent_readings(conn, self.registry.configured(), PER_DEVICE))
            await self.controller.load(conn)
            await restore_hub_batches(self.hubs, conn, self.clock.now())
        except Exception as exc:
            # Close what did open (its database thread would keep the process alive): the writer's loop runs
            # just long enough to see close().
            closing = asyncio.create_task(self.writer.run(), name="store-writer-closing")
            await self.writer.close(timeout=1.0)
            await closing
            raise StartupError(f"database {self.loaded.db_path}", exc) from exc
        failed: StartupError | None = None
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.writer.run(), name="store-writer")
            supervised = [
                self.supervisor.start(tg, f"link:{link.name}", _link_runner(link.run)) for link in self.links.all()
            ]
            if self.uplink is not None:
                supervised.append(self.supervisor.start(tg, "uplink", _link_runner(self.uplink.run)))
            supervised.append(self.supervisor.start(tg, "retention", _link_runner(self.lifecycle.run)))
            supervised.append(self.supervisor.start(tg, "wal-checkpoint", _link_runner(self.checkpointer.run)))
            pruner = tg.create_task(self._prune_outbox(), name="outbox-budget") if self.uplink else None
            # Whoever was connected before a restart or crash is not connected now.
            now = self.clock.now()
            for device_id in self.registry.mark_all_offline(now):
                await self.writer.put(StatusChange(device_id, False, now, "gateway-restart"))
            control = tg.create_task(self.controller.run(), name="control")
            hub_timer = tg.create_task(self.hubs.run(), name="hub-batches")
            background: list[asyncio.Task[None]] = []
            try:
                await self._start_listeners()
            except StartupError as exc:
                failed = exc  # stop what did start, in the usual order, then report it
                log.error("gateway.start_failed", phase=exc.phase, error=str(exc))
                self._stop.set()
            else:
                background = [tg.create_task(self._watchdog(), name="systemd-watchdog"),
                              tg.create_task(trim_periodically(), name="malloc-trim"),
                              tg.create_task(measure_loop_lag(self.metrics), name="loop-lag")]
                self.ready.set()
                self.notifier.ready("running")
                log.info("gateway.started", version=__version__, gateway_id=self.settings.gateway.id,
                         db=str(self.loaded.db_path), devices=len(self.registry.configured()))
            await self._stop.wait()
            self.notifier.stopping()
            self.supervisor.stop()
            log.info("gateway.stopping")
            deadline = asyncio.get_running_loop().time() + SHUTDOWN_BUDGET_S
            if self.api is not None:
                await self.api.stop()
            if self._broker_started:
                await self.broker.stop_intake()
            control.cancel()
            hub_timer.cancel()
            await asyncio.wait([control, hub_timer], timeout=SHUTDOWN_BUDGET_S / 10)
            await self.controller.flush_records()  # audit rows and events not yet handed to the store
            # Unacknowledged rows stay in the outbox for the next start; deletions already under way land.
            if self.uplink is not None:
                await self.uplink.announce_offline()
                self.uplink.stop()
                await self.uplink.cancel_requests()
            await cancel_until_done([t for t in (*supervised, pruner) if t is not None], SHUTDOWN_BUDGET_S / 5)
            await self.history_reader.close()
            await self._shutdown(deadline)
            for task in background:
                task.cancel()
        log.info("gateway.stopped", readings_committed=self.metrics.value("gateway_readings_committed_total"))
        if failed is not None:
            raise failed

    async def _start_listeners(self) -> None:
        """The LAN broker, then the API: raises StartupError naming the one that failed."""
        try:
            await self.broker.start()
        except Exception as exc:
            raise StartupError("LAN broker", exc) from exc
        self._broker_started = True
        if not self.settings.api.enabled:
            return
        from gateway.app_web import start_api  # aiohttp.web costs RSS: only when the API is on

        self.api = await start_api(self)

    async def _shutdown(self, deadline: float) -> None:
        """Flush the store, close the broker (intake already stopped): nothing acknowledged is lost."""
        # The store gets what is left of the budget but a second for the broker; never less than a second.
        await self.writer.close(timeout=max(1.0, deadline - asyncio.get_running_loop().time() - 1.0))
        if not self._broker_started:
            return
        try:
            await asyncio.wait_for(self.broker.shutdown(), timeout=SHUTDOWN_BUDGET_S / 3)
        except TimeoutError:
            log.warning("broker.shutdown_slow")

    async def _prune_outbox(self) -> None:
        o = self.settings.outbox
        while True:
            await self.writer.put(
                OutboxPrune(self.clock.now(), o.max_rows, o.max_bytes, o.ttl_days * 86400.0, o.events_hard_cap)
            )
            await asyncio.sleep(o.prune_interval_seconds)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            # Only a loop that still turns can ping: a stuck event loop lets systemd restart us.
            self.notifier.watchdog()
            await asyncio.sleep(interval)


def _link_runner(run: Callable[[], Awaitable[None]]) -> Callable[[Health], Awaitable[None]]:
    """A supervised runner for a task that does not report its health itself."""

    async def runner(_: Health) -> None:
        await run()

    return runner


async def run_gateway(loaded: LoadedSettings) -> None:
    gateway = Gateway(loaded)
    await gateway.run()

