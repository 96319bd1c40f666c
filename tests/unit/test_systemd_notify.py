"""sd_notify from the event loop must never block it."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from gateway.systemd_notify import SystemdNotifier


def test_a_notify_socket_nobody_reads_does_not_block_the_caller(tmp_path: Path) -> None:
    # A blocking send would stop at the 11th datagram: the gateway's whole event loop would wait until the
    # socket was read (a harness that reads it only at start-up would see the daemon freeze after ~2 s).
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        notifier = SystemdNotifier(str(path))
        done = threading.Event()

        def ping() -> None:
            for _ in range(100):
                notifier.watchdog()
            done.set()

        threading.Thread(target=ping, daemon=True).start()  # a daemon thread: a hang cannot hold pytest
        assert done.wait(5), "notify() blocked on a full socket"
        assert listener.recv(100) == b"WATCHDOG=1"  # what fitted was delivered
