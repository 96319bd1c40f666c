"""Device logins on the embedded broker: whose CONNECT is accepted, and how a refused one is answered.

Checked before amqtt looks up any session (guarded.py, fault 4): a refused CONNECT never touches the
session of the client id it names.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.session import Session

from gateway import malloc_tuning
from gateway.broker.amqtt.connection import transport_of
from gateway.broker.login_backoff import LoginBackoff
from gateway.core.metrics import Metrics
from gateway.core.passwords import verify_password, warm_up

# Session fields a CONNECT brings along when it resumes a persistent session. amqtt copies all but
# will_retain and the peer's address/TLS object, so a resumed session kept the first connection's values.
RESUMED_FIELDS = (
    "will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
    "username", "password", "remote_address", "remote_port", "ssl_object",
)


class DeviceTable:
    """Device id -> argon2 hash (None: may log in without a password when anonymous access is on)."""

    def __init__(self, hashes: dict[str, str | None], *, allow_anonymous: bool) -> None:
        self.hashes = hashes
        self.allow_anonymous = allow_anonymous


class CredentialCheck:
    """Decides whose CONNECT is accepted: (device id, "") or (None, the reason it was refused).

    argon2 needs its memory cost per check in flight (19 MiB for hashes made by `hash-password`, 64 MiB for
    older ones): at most `max_checks` run at once, each in a worker thread; the others wait their turn on
    the event loop (a semaphore: a connection that goes away meanwhile leaves the queue). Failed logins slow
    down the next attempts from the same source (login_backoff.py), before any hash is computed.
    """

    def __init__(self, *, max_checks: int = 1, backoff: LoginBackoff | None = None, metrics: Metrics | None = None
                 ) -> None:
        warm_up()  # before any login is verified in a worker thread
        self._pool = ThreadPoolExecutor(max_workers=max_checks, thread_name_prefix="argon2")
        self._turns = asyncio.Semaphore(max_checks)
        self._verifying = 0  # password checks in flight
        self.backoff = backoff or LoginBackoff()
        self._metrics = metrics or Metrics()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, table: DeviceTable, session: Session) -> tuple[str | None, str]:
        loop = asyncio.get_running_loop()
        source = str(session.remote_address)
        wait = self.backoff.wait_before_check(source, loop.time())
        if wait > 0:
            self._metrics.inc("gateway_broker_logins_delayed_total", 1,
                              "logins held back because their source failed to log in before")
            await asyncio.sleep(wait)
        device_id, reason = await self._decide(table, session)
        if device_id is None:
            self.backoff.failed(source, loop.time())
        else:
            self.backoff.succeeded(source)
        return device_id, reason

    async def _decide(self, table: DeviceTable, session: Session) -> tuple[str | None, str]:
        username: str | None = session.username
        client_id: str | None = session.client_id
        if username is None:
            # Anonymous: only a configured device naming itself by client id, and only if allowed...
            # ...and only one configured without a password: anonymous mode must not bypass a password.
            if table.allow_anonymous and client_id in table.hashes and table.hashes[client_id] is None:
                return client_id, ""
            return None, "anonymous"
        if username not in table.hashes:
            return None, "unknown-device"
        if client_id != username:
            # The client id names the session a CONNECT resumes or takes over: only the device's own.
            return None, "client-id-of-another-device" if client_id in table.hashes else "client-id-not-username"
        password_hash = table.hashes[username]
        if password_hash is None:
            return (username, "") if table.allow_anonymous else (None, "no-password-configured")
        password: str | None = session.password
        if password is None:
            return None, "no-password"
        # argon2 costs tens of ms on a Pi: keep it off the event loop.
        async with self._turns:
            self._verifying += 1
            try:
                ok = await asyncio.get_running_loop().run_in_executor(
                    self._pool, verify_password, password_hash, password
                )
            finally:
                self._verifying -= 1
                if self._verifying == 0:
                    # Each check allocates argon2's memory cost; after a login storm (a power cut brings back
                    # every purifier at once) hand the freed heap back now, not at the next periodic trim
                    # (a trim costs well under a millisecond).
                    malloc_tuning.trim()
        if ok:
            return username, ""
        return None, "bad-password"


async def answer_refused(writer: Any) -> None:
    """Send a refused login its CONNACK and close the connection (abort it if that takes too long).

    One code, 5 "not authorized", for every refusal (as Mosquitto does): with 4 "bad user name or
    password" for some reasons and 5 for others, the answer would tell which device ids exist.
    session_parent 0: nothing of a session is revealed to a refused client [MQTT-3.2.2-4].
    """
    connack = ConnackPacket.build(0, NOT_AUTHORIZED)
    try:
        await asyncio.wait_for(connack.to_stream(writer), 5)
        await asyncio.wait_for(writer.close(), 5)
    except (OSError, TimeoutError):
        transport_of(writer).abort()


def resume_into(session: Session, incoming: Session) -> None:
    """A CONNECT resumes a persistent session: what the CONNECT brought replaces the session's values."""
    for name in RESUMED_FIELDS:
        setattr(session, name, getattr(incoming, name))
