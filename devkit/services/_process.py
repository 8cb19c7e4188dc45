"""What both servers share: tools on PATH, child processes in their own group, log tails, the port race.

Rules:
1. Standard library only.
2. A child runs in its own session (Ctrl-C reaches us, not the server) and is stopped by signalling its group,
   SIGKILLed after a timeout. On Linux ``setpriv --pdeathsig`` makes it die with the thread that started it.
3. A server that loses a picked port to another process is retried with fresh ports (``PORT_ATTEMPTS``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from devkit.ports import LOOPBACK
from devkit.services.errors import DevServiceError, PortInUseError

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
#: Between readiness probes while a server starts.
POLL_INTERVAL_S = 0.05
#: Fresh port sets tried when a picked port was taken before the server could bind it.
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 40


def require_tool(name: str, install_hint: str) -> str:
    """Return the path of ``name`` on PATH, or raise naming what to install."""
    path = shutil.which(name)
    if path is None:
        raise DevServiceError(
            f"`{name}` not found on PATH: install {install_hint} (on Debian `bash scripts/install_test_deps.sh`)"
        )
    return path


def _log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """Last ``lines`` lines of the log written after ``offset`` (earlier runs appended to the same file)."""
    try:
        with path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _port_accepts(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


#: No proxies: an http_proxy in the environment must not swallow loopback probes.
_DIRECT_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with _DIRECT_HTTP.open(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):
        return False


def _child_prefix(run_as: str | None = None, parent_death_signal: str | None = None) -> list[str]:
    """``setpriv`` arguments that switch to ``run_as`` and/or die with this process; [] when neither applies."""
    if parent_death_signal is not None and not sys.platform.startswith("linux"):
        parent_death_signal = None
    if run_as is None and parent_death_signal is None:
        return []
    if run_as is None and shutil.which("setpriv") is None:
        return []  # the parent-death signal is a safety net, not a requirement
    prefix = [require_tool("setpriv", "util-linux")]
    if run_as is not None:
        prefix += [f"--reuid={run_as}", f"--regid={run_as}", "--init-groups"]
    if parent_death_signal is not None:
        prefix += ["--pdeathsig", parent_death_signal]  # applied after the uid switch, which would clear it
    return [*prefix, "--"]


def _spawn(command: Sequence[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own process group, appending its output to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # Ctrl-C reaches us, not the server; stop() signals the whole group
        )


def _stop_group(process: subprocess.Popen[bytes], stop_signal: int | None, timeout_s: float) -> None:
    """Send ``stop_signal`` (None: already asked) to the group, wait, then SIGKILL the group."""
    if process.returncode is not None:
        return
    if stop_signal is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, stop_signal)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # The leader is not reaped yet, so its group id cannot have been reused by another process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _retry_port_race(launch: Callable[[bool], None], may_repick: bool) -> None:
    """Call ``launch(fresh_ports)`` until the server binds; a port lost to a race is retried with fresh ones."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        try:
            launch(attempt > 1)
            return
        except PortInUseError:
            if not may_repick or attempt == PORT_ATTEMPTS:
                raise


class _ServerProcess:
    """What both servers share: a root holding a log, one server process group, ``with`` support."""

    name = "server"
    _log_name = "server.log"

    def __init__(self, *, start_timeout_s: float, stop_timeout_s: float, die_with_parent: bool) -> None:
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._die_with_parent = die_with_parent
        self._root: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        #: Seconds the last start() took until the server answered.
        self.start_duration_s: float | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def root(self) -> Path:
        if self._root is None:
            raise DevServiceError(f"{self.name} has no root before start()")
        return self._root

    @property
    def log_path(self) -> Path:
        return self.root / self._log_name

    @property
    def host(self) -> str:
        return LOOPBACK

    def _launch(self, command: Sequence[str], ready: Callable[[], bool], bind_failure: str) -> None:
        """Spawn ``command`` and keep it once ``ready``; kill it and raise with its log tail if it exits first
        (``PortInUseError`` when the log says ``bind_failure``) or ``start_timeout_s`` passes."""
        log_offset = _log_size(self.log_path)
        process = _spawn(command, self.log_path, self.root)
        deadline_s = time.monotonic() + self._start_timeout_s
        try:
            while not ready():
                exit_code = process.poll()
                if exit_code is not None:
                    tail = _log_tail(self.log_path, log_offset)
                    error = PortInUseError if bind_failure in tail else DevServiceError
                    raise error(f"{self.name} exited with code {exit_code} while starting; log ends with:\n{tail}")
                if time.monotonic() >= deadline_s:
                    tail = _log_tail(self.log_path, log_offset)
                    raise DevServiceError(f"{self.name} not ready after {self._start_timeout_s:.0f} s; log:\n{tail}")
                time.sleep(POLL_INTERVAL_S)
        except BaseException:
            _stop_group(process, signal.SIGKILL, self._stop_timeout_s)
            raise
        self._process = process
