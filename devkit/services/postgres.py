"""A throw-away PostgreSQL cluster on loopback (``PostgresServer``), or one run by someone else (``PostgresEndpoint``).

Rules:
1. Standard library only; the server binaries come from PATH, ``pg_config`` or Debian's versioned directories.
2. PostgreSQL refuses to run as root. As root, initdb, postgres and pg_ctl run as the ``postgres`` system user
   (created with useradd if missing) through ``setpriv``; the temp root stays traversable for it.
3. Durability is off (fsync, synchronous_commit): the data is thrown away at ``close()``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from devkit.ports import LOOPBACK, free_ports
from devkit.services._process import (
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    _child_prefix,
    _retry_port_race,
    _ServerProcess,
    _stop_group,
    require_tool,
)
from devkit.services.errors import DevServiceError

__all__ = ["POSTGRES_SETTINGS", "PostgresEndpoint", "PostgresServer", "ensure_os_user", "find_postgres_bindir"]

_POSTGRES_BIND_FAILURE = "Address already in use"
_POSTGRES_TOOLS = ("initdb", "pg_ctl", "postgres", "pg_isready", "createdb")
#: Durability is pointless for throw-away test data: skip the fsyncs that dominate small transactions.
POSTGRES_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "64MB",
}


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
            "# Written by devkit.services: trust, loopback and the private socket only.\n"
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        settings = {"listen_addresses": LOOPBACK, "unix_socket_directories": str(self.socket_dir), **self._settings}
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# Added by devkit.services\n")
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
