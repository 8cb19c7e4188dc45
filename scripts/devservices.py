#!/usr/bin/env python3
"""Real QuestDB and PostgreSQL servers on loopback, for tests and for development, without Docker.

Tests put this folder on ``sys.path`` and ``import devservices`` (tests/conftest.py does); people run
``python scripts/devservices.py --help``. docs/development.md shows both.

Rules:
1. Standard library only: it must run before the project or its dependencies are installed.
2. Loopback only, and every port is picked free at start unless given: several test sessions share one
   machine, so nothing may assume 9000 or 8812. A picked port that another process grabs before the server
   binds it is retried with fresh ports (``PORT_ATTEMPTS``); given ports and restarts never move.
3. A server never outlives its owner. ``stop()`` signals the whole process group (SIGTERM for QuestDB, an
   immediate shutdown for PostgreSQL) and SIGKILLs it after ``stop_timeout_s``. On Linux each server also gets
   a parent-death signal through ``setpriv --pdeathsig``, so a SIGKILLed pytest leaks no java or postgres.
   That signal fires when the *thread* that started the server ends: start servers from a long-lived thread.
4. PostgreSQL refuses to run as root. As root, initdb, postgres and pg_ctl run as the ``postgres`` system
   user (created with useradd if missing) through ``setpriv``; the temp root stays traversable for it.
5. Classes take every choice as a parameter; only ``main()`` (the CLI) reads arguments. Nothing reads the
   environment, except that child processes inherit it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Self

__all__ = [
    "DEFAULT_QUESTDB_CACHE_DIR",
    "DEFAULT_QUESTDB_VERSION",
    "DevServiceError",
    "POSTGRES_SETTINGS",
    "QUESTDB_JVM_OPTIONS",
    "QUESTDB_LIGHT_CONF",
    "QUESTDB_TEST_CONF",
    "QUESTDB_TEST_JVM_OPTIONS",
    "PortInUseError",
    "PostgresEndpoint",
    "PostgresServer",
    "ensure_os_user",
    "QuestDBEndpoint",
    "QuestDBServer",
    "fetch_questdb_jar",
    "find_postgres_bindir",
    "free_ports",
    "main",
    "require_tool",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Newest QuestDB that Maven Central serves here and that runs on the default Java 17 (9.4+ needs Java 25).
DEFAULT_QUESTDB_VERSION = "9.3.4"
#: Git-ignored; holds questdb-<version>.jar.
DEFAULT_QUESTDB_CACHE_DIR = REPO_ROOT / ".cache" / "questdb"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
LOOPBACK = "127.0.0.1"
QUESTDB_USER = "admin"
QUESTDB_PASSWORD = "quest"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
FETCH_TIMEOUT_S = 600.0
#: Between readiness probes while a server starts.
POLL_INTERVAL_S = 0.05
#: How often the foreground CLI checks that its servers are still alive.
CLI_POLL_INTERVAL_S = 0.5
#: Fresh port sets tried when a picked port was taken before the server could bind it.
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 40
#: A small heap is plenty (QuestDB keeps data off-heap); the serial GC adds no GC threads on 2 cores.
QUESTDB_JVM_OPTIONS: tuple[str, ...] = ("-Xms64m", "-Xmx2g", "-XX:+UseSerialGC")
#: For test sessions: C1 only. Measured on 2 cores: start-up 4.6 instead of 8 CPU-seconds, and the first 500k-row
#: ILP batch 3.6 instead of 6.2 server CPU-seconds; only past ~1M rows does the full JIT (1 s per 500k once warm)
#: pay back. Keep the default for benchmarks and for the CLI.
QUESTDB_TEST_JVM_OPTIONS: tuple[str, ...] = (*QUESTDB_JVM_OPTIONS, "-XX:TieredStopAtLevel=1")
#: Sized for a 2-core machine shared by several sessions. QuestDB sizes pools from the CPU count otherwise
#: (36 threads, ~380 MB RSS idle on 2 cores; with these ~20 threads, ~300 MB). Keys are validated strictly:
#: an unknown key stops the server.
QUESTDB_LIGHT_CONF: Mapping[str, str] = {
    "shared.network.worker.count": "2",  # HTTP, PG wire and ILP I/O; one would serialize all clients
    "shared.query.worker.count": "1",
    "shared.write.worker.count": "1",
    "wal.apply.worker.count": "1",
    "mat.view.refresh.worker.count": "0",  # 0 = run on the shared pool, no threads of its own
    "view.compiler.worker.count": "0",
    "export.worker.count": "0",
    "http.min.worker.count": "0",
    "log.sql.query.progress.exe": "false",  # one log line per query, not two
}
#: For test sessions, which create hundreds of small tables: QuestDB reserves disk for each column file in append
#: pages of 16 MB by default (fallocate, so it counts as used): ~290 MB per bars+ledger pair of tables, 9 GB for a
#: test opening thirty tables, a full disk for three suites side by side. 128 KB pages (QuestDB's "many tables"
#: recipe) make a table cost a few MB. Keep the default for benchmarks and for the CLI: big tables want big pages.
QUESTDB_TEST_CONF: Mapping[str, str] = {
    "cairo.o3.column.memory.size": "128K",
    "cairo.system.writer.data.append.page.size": "128K",
    "cairo.writer.data.append.page.size": "128K",
    "cairo.writer.data.index.key.append.page.size": "128K",
    "cairo.writer.data.index.value.append.page.size": "128K",
}
_QUESTDB_BIND_KEYS = {
    "http": "http.net.bind.to",
    "http_min": "http.min.net.bind.to",
    "pg": "pg.net.bind.to",
    "ilp_tcp": "line.tcp.net.bind.to",
}
_QUESTDB_BIND_FAILURE = "could not bind socket"
_POSTGRES_BIND_FAILURE = "Address already in use"
_POSTGRES_TOOLS = ("initdb", "pg_ctl", "postgres", "pg_isready", "createdb")
#: Durability is pointless for throw-away test data: skip the fsyncs that dominate small transactions.
POSTGRES_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
}


class DevServiceError(RuntimeError):
    """A tool is missing, or a server did not start or stop; the message says what to install or shows its log."""


class PortInUseError(DevServiceError):
    """The server could not bind a port: another process took it between the pick and the bind."""


# ---------------------------------------------------------------- small helpers


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Return ``count`` distinct ports free on ``host`` now (all sockets stay open until all are picked)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


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
            return response.status == 200
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


# ---------------------------------------------------------------- QuestDB


def fetch_questdb_jar(
    cache_dir: Path = DEFAULT_QUESTDB_CACHE_DIR,
    version: str = DEFAULT_QUESTDB_VERSION,
    *,
    timeout_s: float = FETCH_TIMEOUT_S,
) -> Path:
    """Return ``cache_dir/questdb-<version>.jar``, downloading it from Maven Central with mvn if missing."""
    jar = cache_dir / f"questdb-{version}.jar"
    if jar.is_file():
        return jar
    mvn = require_tool("mvn", "Maven (Debian package `maven`)")
    require_tool("java", "a JDK 17 (Debian package `default-jdk-headless`)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Download beside the cache and rename, so a concurrent session never sees half a jar.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as staging:
        artifact = f"-Dartifact=org.questdb:questdb:{version}:jar"
        command = [mvn, "-B", "-q", f"{MAVEN_DEPENDENCY_PLUGIN}:copy", artifact, f"-DoutputDirectory={staging}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        fetched = Path(staging) / jar.name
        if result.returncode != 0 or not fetched.is_file():
            output = (result.stdout + result.stderr).strip()[-3000:]
            raise DevServiceError(
                f"could not fetch org.questdb:questdb:{version} (exit {result.returncode}): {' '.join(command)}\n"
                f"{output}"
            )
        os.replace(fetched, jar)
    return jar


@dataclass(frozen=True)
class QuestDBEndpoint:
    """Where a QuestDB answers: the attributes of ``QuestDBServer``, for a server run by someone else."""

    host: str
    http_port: int
    pg_port: int
    user: str = QUESTDB_USER
    password: str = QUESTDB_PASSWORD

    @property
    def ilp_conf(self) -> str:
        """``questdb`` client configuration for ILP over HTTP; append options such as ``auto_flush=off;``."""
        return f"http::addr={self.host}:{self.http_port};"

    @property
    def pg_dsn(self) -> str:
        return f"postgresql://{self._credentials}@{self.host}:{self.pg_port}/qdb"

    @property
    def dsn(self) -> str:
        """The project's storage DSN (``--storage`` of the worker)."""
        return f"questdb://{self._credentials}@{self.host}:{self.pg_port}/?http_port={self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def _credentials(self) -> str:
        return f"{urllib.parse.quote(self.user, safe='')}:{urllib.parse.quote(self.password, safe='')}"

    @classmethod
    def from_dsn(cls, dsn: str) -> QuestDBEndpoint:
        """Parse ``questdb://USER:PASS@HOST:PGPORT/?http_port=HTTPPORT`` (the ports default to 8812 and 9000)."""
        parts = urllib.parse.urlsplit(dsn)
        if parts.scheme != "questdb" or not parts.hostname:
            raise ValueError(f"dsn: expected questdb://USER:PASS@HOST:PGPORT/?http_port=P, got scheme {parts.scheme!r}")
        http_ports = urllib.parse.parse_qs(parts.query).get("http_port", ["9000"])
        return cls(
            host=parts.hostname,
            http_port=int(http_ports[0]),
            pg_port=parts.port or 8812,
            user=urllib.parse.unquote(parts.username or QUESTDB_USER),
            password=urllib.parse.unquote(parts.password or QUESTDB_PASSWORD),
        )


class QuestDBServer(_ServerProcess):
    """A QuestDB from its Maven jar on loopback: ``with QuestDBServer() as qdb: qdb.pg_dsn``.

    ``root`` None makes a temp root, removed by ``close()``; a given root is kept. ``conf/server.conf`` is
    rewritten at every start (put your own keys in ``extra_conf``). The server's output goes to
    ``root/questdb.log``.
    """

    name = "QuestDB"
    _log_name = "questdb.log"
    user = QUESTDB_USER
    password = QUESTDB_PASSWORD

    def __init__(
        self,
        root: Path | None = None,
        *,
        jar: Path | None = None,
        version: str = DEFAULT_QUESTDB_VERSION,
        cache_dir: Path = DEFAULT_QUESTDB_CACHE_DIR,
        http_port: int | None = None,
        pg_port: int | None = None,
        ilp_tcp_port: int | None = None,
        http_min_port: int | None = None,
        java: str = "java",
        jvm_options: Sequence[str] = QUESTDB_JVM_OPTIONS,
        extra_conf: Mapping[str, str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s, die_with_parent=die_with_parent
        )
        self._root = root
        self._owns_root = root is None
        self._jar = jar
        self._version = version
        self._cache_dir = cache_dir
        self._requested_ports = {"http": http_port, "pg": pg_port, "ilp_tcp": ilp_tcp_port, "http_min": http_min_port}
        self._ports: dict[str, int] = {}
        self._java = java
        self._jvm_options = tuple(jvm_options)
        self._extra_conf = dict(extra_conf or {})

    def start(self) -> Self:
        """Start the server and return once HTTP ``select 1`` and the PG port answer."""
        if self.running:
            raise DevServiceError(f"QuestDB already running (pid {self.pid})")
        java = require_tool(self._java, "a Java 17 runtime (Debian package `default-jdk-headless`)")
        jar = self._jar or fetch_questdb_jar(self._cache_dir, self._version)
        created_root = self._root is None
        self._ensure_root()
        may_repick = not self._ports and None in self._requested_ports.values()  # never on restart
        started_s = time.monotonic()

        def launch(fresh_ports: bool) -> None:
            if fresh_ports or not self._ports:
                self._ports = self._pick_ports()
            (self.root / "conf" / "server.conf").write_text(self._server_conf())
            death_signal = "TERM" if self._die_with_parent else None
            prefix = _child_prefix(parent_death_signal=death_signal)
            main_module = "io.questdb/io.questdb.ServerMain"
            command = [*prefix, java, *self._jvm_options, "-p", str(jar), "-m", main_module, "-d", str(self.root)]
            self._launch(command, self._answers, _QUESTDB_BIND_FAILURE)

        try:
            _retry_port_race(launch, may_repick)
        except BaseException:
            if created_root:  # a temp root that never served is useless; the error carries the log tail
                self.close()
            raise
        self.start_duration_s = time.monotonic() - started_s
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after ``stop_timeout_s``); root and ports are kept for start()."""
        if self._process is not None:
            _stop_group(self._process, signal.SIGTERM, self._stop_timeout_s)
            self._process = None

    def restart(self) -> Self:
        """Stop and start again on the same root and ports; the data is kept."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its root if this object made it."""
        self.stop()
        if self._owns_root and self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._ports = {}

    @property
    def endpoint(self) -> QuestDBEndpoint:
        if not self._ports:
            raise DevServiceError("QuestDB has no ports before start()")
        return QuestDBEndpoint(LOOPBACK, self._ports["http"], self._ports["pg"])

    @property
    def http_port(self) -> int:
        return self.endpoint.http_port

    @property
    def pg_port(self) -> int:
        return self.endpoint.pg_port

    @property
    def ilp_tcp_port(self) -> int:
        return self._ports["ilp_tcp"]

    @property
    def http_min_port(self) -> int:
        return self._ports["http_min"]

    @property
    def ilp_conf(self) -> str:
        return self.endpoint.ilp_conf

    @property
    def pg_dsn(self) -> str:
        return self.endpoint.pg_dsn

    @property
    def dsn(self) -> str:
        return self.endpoint.dsn

    @property
    def http_url(self) -> str:
        return self.endpoint.http_url

    def _ensure_root(self) -> None:
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="seamless-questdb-"))
        (self._root / "conf").mkdir(parents=True, exist_ok=True)

    def _pick_ports(self) -> dict[str, int]:
        fresh = iter(free_ports(len(self._requested_ports)))
        return {name: port or next(fresh) for name, port in self._requested_ports.items()}

    def _server_conf(self) -> str:
        settings = {
            **{key: f"{LOOPBACK}:{self._ports[name]}" for name, key in _QUESTDB_BIND_KEYS.items()},
            "line.udp.enabled": "false",
            "telemetry.enabled": "false",
            **QUESTDB_LIGHT_CONF,
            **self._extra_conf,
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        header = "# Written by scripts/devservices.py at every start: edits are lost (use extra_conf / --conf).\n"
        return header + "\n".join(lines) + "\n"

    def _answers(self) -> bool:
        return _http_ok(f"{self.http_url}/exec?query=select%201") and _port_accepts(LOOPBACK, self.pg_port)


# ---------------------------------------------------------------- PostgreSQL


def _major_version(bindir: Path) -> int:
    return int(bindir.parent.name) if bindir.parent.name.isdigit() else 0


def find_postgres_bindir(bindir: Path | None = None) -> Path:
    """Return the directory holding initdb, pg_ctl, postgres, pg_isready and createdb.

    Looks at ``bindir``, then ``pg_config --bindir``, then Debian's ``/usr/lib/postgresql/<newest>/bin``.
    """
    candidates = [bindir] if bindir is not None else []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    debian_dirs = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(debian_dirs, key=_major_version, reverse=True)
    for candidate in candidates:
        if all((candidate / tool).is_file() for tool in _POSTGRES_TOOLS):
            return candidate
    searched = ", ".join(str(path) for path in candidates) or "nothing"
    raise DevServiceError(
        f"PostgreSQL server binaries ({', '.join(_POSTGRES_TOOLS)}) not found (searched {searched}): "
        "install the Debian package `postgresql` (or run `bash scripts/install_test_deps.sh`)"
    )


def ensure_os_user(name: str) -> str:
    """Return ``name`` after creating it as a system user if missing (root only)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        useradd = require_tool("useradd", "the Debian package `passwd`")
        account_options = ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        command = [useradd, *account_options, "--shell", "/usr/sbin/nologin", name]
        subprocess.run(command, check=True, capture_output=True)
    return name


@dataclass(frozen=True)
class PostgresEndpoint:
    """Where a PostgreSQL answers: the attributes of ``PostgresServer``, for a server run by someone else."""

    host: str
    port: int
    user: str
    database: str
    password: str | None = None

    @property
    def dsn(self) -> str:
        credentials = urllib.parse.quote(self.user, safe="")
        if self.password is not None:
            credentials += ":" + urllib.parse.quote(self.password, safe="")
        return f"postgresql://{credentials}@{self.host}:{self.port}/{self.database}"

    @classmethod
    def from_dsn(cls, dsn: str) -> PostgresEndpoint:
        """Parse ``postgresql://USER[:PASS]@HOST[:PORT]/DATABASE``."""
        parts = urllib.parse.urlsplit(dsn)
        if parts.scheme not in {"postgresql", "postgres"} or not parts.hostname:
            raise ValueError(f"dsn: expected postgresql://USER@HOST:PORT/DATABASE, got scheme {parts.scheme!r}")
        return cls(
            host=parts.hostname,
            port=parts.port or 5432,
            user=urllib.parse.unquote(parts.username or "postgres"),
            database=parts.path.lstrip("/") or "postgres",
            password=None if parts.password is None else urllib.parse.unquote(parts.password),
        )


class PostgresServer(_ServerProcess):
    """A throw-away PostgreSQL cluster on loopback: ``with PostgresServer() as pg: pg.dsn``.

    initdb into a temp root (trust auth, 127.0.0.1 and a socket in the root only, fsync off), start
    ``postgres`` in the foreground (so it is our child and gets the parent-death signal), create
    ``database``. ``close()`` (alias ``stop()``) stops it with ``pg_ctl stop -m immediate`` and removes the root.
    """

    name = "PostgreSQL"
    _log_name = "postgres.log"
    password: str | None = None  # trust authentication

    def __init__(
        self,
        *,
        port: int | None = None,
        database: str = "seamless",
        superuser: str = "postgres",
        bindir: Path | None = None,
        base_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
        stop_timeout_s: float = STOP_TIMEOUT_S,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(
            start_timeout_s=start_timeout_s, stop_timeout_s=stop_timeout_s, die_with_parent=die_with_parent
        )
        self._requested_port = port
        self._port: int | None = None
        self.database = database
        self.user = superuser
        self._bindir = bindir
        self._base_dir = base_dir
        self._settings = {**POSTGRES_SETTINGS, **(settings or {})}
        self._run_as: str | None = None

    def start(self) -> Self:
        """Create the cluster, start it and create the database; return once it accepts connections."""
        if self._root is not None:
            raise DevServiceError(f"PostgreSQL already started in {self._root}")
        started_s = time.monotonic()
        bindir = find_postgres_bindir(self._bindir)
        self._run_as = ensure_os_user("postgres") if os.geteuid() == 0 else None
        self._root = Path(tempfile.mkdtemp(prefix="seamless-pg-", dir=self._base_dir))
        try:
            self._init_cluster(bindir)
            _retry_port_race(lambda fresh_port: self._launch_postgres(bindir), self._requested_port is None)
            self._client_tool(bindir, "createdb", "--", self.database)
        except BaseException:
            self.close()
            raise
        self.start_duration_s = time.monotonic() - started_s
        return self

    def close(self) -> None:
        """Stop the server (``pg_ctl stop -m immediate``, SIGKILL if that fails) and remove the root."""
        if self._process is not None and self._root is not None:
            bindir = find_postgres_bindir(self._bindir)
            timeout = str(int(self._stop_timeout_s))
            pg_ctl = [*_child_prefix(self._run_as), str(bindir / "pg_ctl")]
            command = [*pg_ctl, "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", timeout]
            stopped = subprocess.run(command, capture_output=True, cwd=self._root, check=False).returncode == 0
            _stop_group(self._process, None if stopped else signal.SIGQUIT, self._stop_timeout_s)
        self._process = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    stop = close

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevServiceError("PostgreSQL has no port before start()")
        return self._port

    @property
    def endpoint(self) -> PostgresEndpoint:
        return PostgresEndpoint(LOOPBACK, self.port, self.user, self.database)

    @property
    def dsn(self) -> str:
        return self.endpoint.dsn

    def _init_cluster(self, bindir: Path) -> None:
        for directory in (self.data_dir, self.socket_dir):
            directory.mkdir(mode=0o700)
        if self._run_as is not None:
            self.root.chmod(0o711)  # the postgres user must traverse the root-owned temp dir
            account = pwd.getpwnam(self._run_as)
            for directory in (self.data_dir, self.socket_dir):
                os.chown(directory, account.pw_uid, account.pw_gid)
        options = ["-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        initdb = [*_child_prefix(self._run_as), str(bindir / "initdb")]
        command = [*initdb, "-D", str(self.data_dir), "-U", self.user, *options]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root, check=False)
        if result.returncode != 0:
            raise DevServiceError(f"initdb failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
        # Rewriting the files in place keeps their owner (the postgres user when we are root).
        (self.data_dir / "pg_hba.conf").write_text(
            "# Written by scripts/devservices.py: trust, loopback and the private socket only.\n"
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        settings = {"listen_addresses": LOOPBACK, "unix_socket_directories": str(self.socket_dir), **self._settings}
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Added by scripts/devservices.py\n")
            conf.writelines(f"{key} = '{value}'\n" for key, value in settings.items())

    def _launch_postgres(self, bindir: Path) -> None:
        self._port = self._requested_port or free_ports(1)[0]
        death_signal = "QUIT" if self._die_with_parent else None  # SIGQUIT = immediate shutdown
        postgres = [*_child_prefix(self._run_as, death_signal), str(bindir / "postgres")]
        command = [*postgres, "-D", str(self.data_dir), "-p", str(self.port)]
        self._launch(command, lambda: self._is_ready(bindir), _POSTGRES_BIND_FAILURE)

    def _is_ready(self, bindir: Path) -> bool:
        return self._client_tool(bindir, "pg_isready", "-t", "1", check=False) == 0

    def _client_tool(self, bindir: Path, tool: str, *args: str, check: bool = True) -> int:
        """Run a client tool against the server over TCP (clients may run as root); return its exit code."""
        command = [str(bindir / tool), "-h", LOOPBACK, "-p", str(self.port), "-U", self.user, *args]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root, check=False)
        if check and result.returncode != 0:
            raise DevServiceError(f"{tool} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}")
        return result.returncode


# ---------------------------------------------------------------- CLI


def _parse_conf(items: Sequence[str]) -> dict[str, str]:
    conf: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--conf: expected KEY=VALUE, got {item!r}")
        conf[key.strip()] = value.strip()
    return conf


def _questdb_lines(server: QuestDBServer, version: str) -> list[str]:
    return [
        f"QuestDB {version} ready in {server.start_duration_s:.1f} s (root {server.root})",
        f"  web console  {server.http_url}",
        f"  dsn          {server.dsn}",
        f"  pg_dsn       {server.pg_dsn}",
        f"  ilp_conf     {server.ilp_conf}",
        f"  log          {server.log_path}",
        f"  for tests:   export SEAMLESS_TEST_QUESTDB_DSN='{server.dsn}'",
    ]


def _postgres_lines(server: PostgresServer) -> list[str]:
    return [
        f"PostgreSQL ready in {server.start_duration_s:.1f} s (data {server.data_dir}, removed at exit)",
        f"  dsn          {server.dsn}",
        f"  log          {server.log_path}",
        f"  for tests:   export SEAMLESS_TEST_POSTGRES_DSN='{server.dsn}'",
    ]


def _serve(args: argparse.Namespace) -> int:
    """Start the servers the command names, print where they answer, run until Ctrl-C or one of them dies."""
    with contextlib.ExitStack() as stack:
        servers: list[_ServerProcess] = []
        lines: list[str] = []
        if args.command in {"questdb", "all"}:
            questdb = QuestDBServer(
                root=args.root,
                version=args.version,
                http_port=args.http_port,
                pg_port=args.pg_port,
                ilp_tcp_port=args.ilp_tcp_port,
                extra_conf=_parse_conf(args.conf),
            )
            servers.append(stack.enter_context(questdb))
            lines += _questdb_lines(questdb, args.version)
        if args.command in {"postgres", "all"}:
            postgres = stack.enter_context(PostgresServer(port=args.postgres_port, database=args.database))
            servers.append(postgres)
            lines += _postgres_lines(postgres)
        print("\n".join([*lines, "Ctrl-C stops everything."]), flush=True)
        try:
            while all(server.running for server in servers):
                time.sleep(CLI_POLL_INTERVAL_S)
        except KeyboardInterrupt:
            return 0
        for server in servers:
            if not server.running:
                print(f"{server.name} exited on its own; see {server.log_path}", file=sys.stderr)
        return 1


def _fetch(args: argparse.Namespace) -> int:
    print(fetch_questdb_jar(args.cache_dir, args.version))
    return 0


def _questdb_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("QuestDB")
    group.add_argument("--root", type=Path, help="QuestDB data root to keep (default: a temp dir removed at exit)")
    group.add_argument("--http-port", type=int, help="HTTP / ILP / web console port (default: a free one)")
    group.add_argument("--pg-port", type=int, help="QuestDB PostgreSQL wire port (default: a free one)")
    group.add_argument("--ilp-tcp-port", type=int, help="ILP over TCP port (default: a free one)")
    group.add_argument("--version", default=DEFAULT_QUESTDB_VERSION, help="QuestDB jar version (%(default)s)")
    group.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra server.conf key")
    return options


def _postgres_options(port_flag: str) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("PostgreSQL")
    group.add_argument(port_flag, dest="postgres_port", type=int, help="port on 127.0.0.1 (default: a free one)")
    group.add_argument("--database", default="seamless", help="database to create (%(default)s)")
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="devservices.py",
        description="Run real QuestDB / PostgreSQL servers on 127.0.0.1 for development and tests (no Docker). "
        "Servers run in the foreground and print their DSNs; Ctrl-C stops them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    questdb = _questdb_options()
    commands.add_parser("questdb", parents=[questdb], help="run QuestDB").set_defaults(handler=_serve)
    postgres = commands.add_parser(
        "postgres", parents=[_postgres_options("--port")], help="run a throw-away PostgreSQL"
    )
    postgres.set_defaults(handler=_serve)
    both = commands.add_parser("all", parents=[questdb, _postgres_options("--postgres-port")], help="run both")
    both.set_defaults(handler=_serve)
    fetch = commands.add_parser("fetch-questdb", help="download the QuestDB jar with Maven if missing")
    fetch.add_argument("--version", default=DEFAULT_QUESTDB_VERSION, help="QuestDB version (%(default)s)")
    fetch.add_argument("--cache-dir", type=Path, default=DEFAULT_QUESTDB_CACHE_DIR, help="(%(default)s)")
    fetch.set_defaults(handler=_fetch)
    return parser


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the with-blocks, so the servers are stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    try:
        return int(args.handler(args))
    except DevServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
