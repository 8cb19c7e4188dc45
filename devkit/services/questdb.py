"""QuestDB from its Maven jar on loopback (``QuestDBServer``), or one run by someone else (``QuestDBEndpoint``).

Rules:
1. Standard library only. The jar is fetched once with Maven into ``.cache/questdb`` (git-ignored).
2. ``conf/server.conf`` is rewritten at every start; every port is picked free unless given, and a restart keeps
   the root and the ports.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from devkit.ports import LOOPBACK, free_ports
from devkit.services._process import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    _child_prefix,
    _http_ok,
    _port_accepts,
    _retry_port_race,
    _ServerProcess,
    _stop_group,
    require_tool,
)
from devkit.services.errors import DevServiceError

__all__ = [
    "DEFAULT_QUESTDB_CACHE_DIR",
    "DEFAULT_QUESTDB_VERSION",
    "QUESTDB_JVM_OPTIONS",
    "QUESTDB_LIGHT_CONF",
    "QUESTDB_TEST_CONF",
    "QUESTDB_TEST_JVM_OPTIONS",
    "QuestDBEndpoint",
    "QuestDBServer",
    "fetch_questdb_jar",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Newest QuestDB that Maven Central serves here and that runs on the default Java 17 (9.4+ needs Java 25).
DEFAULT_QUESTDB_VERSION = "9.3.4"
#: Git-ignored; holds questdb-<version>.jar.
DEFAULT_QUESTDB_CACHE_DIR = REPO_ROOT / ".cache" / "questdb"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
QUESTDB_USER = "admin"
QUESTDB_PASSWORD = "quest"
FETCH_TIMEOUT_S = 600.0
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
        header = "# Written by devkit.services at every start: edits are lost (use extra_conf / --conf).\n"
        return header + "\n".join(lines) + "\n"

    def _answers(self) -> bool:
        return _http_ok(f"{self.http_url}/exec?query=select%201") and _port_accepts(LOOPBACK, self.pg_port)
