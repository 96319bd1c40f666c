"""One Mosquitto process: started from its config file, its log (stderr) read line by line, stopped in order.

It runs in its own session (process group): a Ctrl-C at the daemon's terminal reaches the daemon, which
stops Mosquitto itself after its intake (SIGTERM: Mosquitto saves its persistence file on the way out).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from gateway.broker.mosquitto.config_files import PID_NAME

log = structlog.get_logger(__name__)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_RUNNING = " running"  # "mosquitto version 2.0.11 running": every listener is open
# systemd's variables are for the daemon (the unit's main process): Mosquitto, built with systemd support, would
# send its own READY=1 to the daemon's notify socket as soon as its listeners are open, before the gateway's
# session is there to take what devices publish (a supervisor that listens to it lets devices in too early).
_SYSTEMD_VARIABLES = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"})


class MosquittoStartError(RuntimeError):
    """Mosquitto exited, or did not open its listeners in time; the message ends with its last log lines."""


class MosquittoChild:
    def __init__(self, binary: Path, config: Path, on_line: Callable[[str], Awaitable[None]],
                 on_exit: Callable[[], Awaitable[None]]) -> None:
        self._binary = binary
        self._config = config
        self._pid_file = config.with_name(PID_NAME)
        self._on_line = on_line  # each log line once Mosquitto runs, in order (awaited: presence keeps its order)
        self._on_exit = on_exit  # after the last line of a Mosquitto that ran: its connections are gone
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.last_lines: deque[str] = deque(maxlen=10)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start Mosquitto; return once it has opened every listener, raise MosquittoStartError if it did not."""
        self.last_lines.clear()
        await self._stop_left_behind()
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self._binary), "-c", str(self._config), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
                env={k: v for k, v in os.environ.items() if k not in _SYSTEMD_VARIABLES},
            )
        except OSError as exc:
            raise MosquittoStartError(f"cannot run {self._binary}: {exc}") from exc
        self._proc = proc
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read_log(proc, started), name="mosquitto-log")
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await asyncio.shield(started)
        except TimeoutError:
            await self.stop()
            if started.done():
                started.exception()  # retrieved: the timeout is what is reported
            raise MosquittoStartError(f"not running after {START_TIMEOUT} s: {self._tail()}") from None
        except MosquittoStartError:
            await self.stop()
            raise

    async def wait(self) -> int:
        """Until the process has exited (and its log is read to the end); its exit status."""
        assert self._proc is not None
        code = await self._proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        return code

    def reload(self) -> None:
        """SIGHUP: Mosquitto reads its config, password and ACL files again (listeners stay as they are)."""
        if self.running and self._proc is not None:
            self._proc.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        """SIGTERM and wait (Mosquitto saves its state); SIGKILL if it does not end in time."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None

    def kill(self) -> None:
        """SIGKILL (tests: a crash)."""
        if self.running and self._proc is not None:
            self._proc.kill()

    async def _stop_left_behind(self) -> None:
        """A Mosquitto still running on our config (the daemon before this one was killed with -9; outside
        systemd, which would have stopped it) holds our ports and persistence file: SIGTERM it and wait."""
        pid = self._left_behind()
        if pid is None:
            return
        log.warning("mosquitto.left_behind", pid=pid, action="SIGTERM")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(int(STOP_TIMEOUT / 0.05)):
            if not _alive(pid):
                return
            await asyncio.sleep(0.05)  # not our child: there is nothing to wait on but the pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def _left_behind(self) -> int | None:
        """The pid in Mosquitto's pid file, if that process is a Mosquitto on our config and not our child."""
        try:
            pid = int(self._pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return None
        if str(self._config).encode() not in cmdline or (self._proc is not None and self._proc.pid == pid):
            return None
        return pid

    def _tail(self) -> str:
        return " | ".join(self.last_lines) or "(no output)"

    async def _read_log(self, proc: asyncio.subprocess.Process, started: asyncio.Future[None]) -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.last_lines.append(line)
            if not started.done():
                if line.endswith(_RUNNING) and line.startswith("mosquitto version"):
                    started.set_result(None)
                continue
            await self._on_line(line)
        if started.done():
            await self._on_exit()
        else:
            await proc.wait()
            started.set_exception(MosquittoStartError(f"exited with status {proc.returncode}: {self._tail()}"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
