"""Real QuestDB and PostgreSQL servers on loopback, for tests and for development, without Docker.

Tests use ``from devkit import services`` (tests/conftest.py's session fixtures); people run
``python -m devkit.services --help`` from the repository root. docs/development.md shows both.

Modules: ``questdb`` (the jar, ``QuestDBServer``, ``QuestDBEndpoint``), ``postgres`` (``PostgresServer``,
``PostgresEndpoint``), ``_process`` (what both servers share), ``errors``, ``cli`` (``python -m devkit.services``).

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
5. Classes take every choice as a parameter; only ``cli.main()`` reads arguments. Nothing reads the
   environment, except that child processes inherit it.
"""

from __future__ import annotations

from devkit.ports import free_ports
from devkit.services._process import require_tool
from devkit.services.cli import main
from devkit.services.errors import DevServiceError, PortInUseError
from devkit.services.postgres import (
    POSTGRES_SETTINGS,
    PostgresEndpoint,
    PostgresServer,
    ensure_os_user,
    find_postgres_bindir,
)
from devkit.services.questdb import (
    DEFAULT_QUESTDB_CACHE_DIR,
    DEFAULT_QUESTDB_VERSION,
    QUESTDB_JVM_OPTIONS,
    QUESTDB_LIGHT_CONF,
    QUESTDB_TEST_CONF,
    QUESTDB_TEST_JVM_OPTIONS,
    QuestDBEndpoint,
    QuestDBServer,
    fetch_questdb_jar,
)

__all__ = [
    "DEFAULT_QUESTDB_CACHE_DIR",
    "DEFAULT_QUESTDB_VERSION",
    "POSTGRES_SETTINGS",
    "QUESTDB_JVM_OPTIONS",
    "QUESTDB_LIGHT_CONF",
    "QUESTDB_TEST_CONF",
    "QUESTDB_TEST_JVM_OPTIONS",
    "DevServiceError",
    "PortInUseError",
    "PostgresEndpoint",
    "PostgresServer",
    "QuestDBEndpoint",
    "QuestDBServer",
    "ensure_os_user",
    "fetch_questdb_jar",
    "find_postgres_bindir",
    "free_ports",
    "main",
    "require_tool",
]
