"""sd_notify(3) without a dependency: READY, WATCHDOG, STOPPING, RELOADING, STATUS."""

from __future__ import annotations

import contextlib
import os
import socket


class SystemdNotifier:
    """Talks to $NOTIFY_SOCKET when systemd gave one; otherwise every call does nothing."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        if address:
            # A leading "@" names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Half of WatchdogSec (systemd passes it in microseconds), or None without a watchdog."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1_000_000 / 2
        except ValueError:
            return None

    def notify(self, *lines: str) -> None:
        if self._address is None:
            return
        message = "\n".join(lines).encode()
        # Never blocking: this runs on the event loop, and a notify socket whose reader is slow or stuck
        # (its queue holds 10 datagrams) blocked the whole gateway until it was read. A message that
        # does not fit is dropped, as is one to a systemd that is gone (a stale variable): both are
        # told again on the next watchdog ping or state change.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.sendto(message, self._address)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", f"STATUS={status}" if status else "STATUS=running")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1")
