"""Storage DSNs: every field is checked, bad ones raise errors that name the field and never show passwords."""

from __future__ import annotations

import pytest

from provider.storage import StorageConfigError, StorageUnavailableError, open_storage, parse_dsn


@pytest.mark.parametrize(
    ("dsn", "kind", "field"),
    [
        pytest.param(None, None, "dsn", id="not-a-string"),
        pytest.param("seamless.db", None, "dsn", id="no-scheme"),
        pytest.param("mysql://u@h/db", None, "scheme", id="unknown-scheme"),
        pytest.param("questdb://admin:quest@/?http_port=9000", None, "host", id="questdb-no-host"),
        pytest.param("questdb://admin:quest@h:99999/", None, "port", id="port-out-of-range"),
        pytest.param("questdb://admin:quest@h:0/", None, "port", id="port-zero"),
        pytest.param("questdb://admin:quest@h:x1/", None, "port", id="port-not-a-number"),
        pytest.param("questdb://h:8812/?http_port=abc", None, "http_port", id="http-port-not-a-number"),
        pytest.param("questdb://h:8812/?http_port=70000", None, "http_port", id="http-port-out-of-range"),
        pytest.param("questdb://h:8812/?table=Bars", None, "table", id="table-upper-case"),
        pytest.param("questdb://h:8812/?table=x;drop", None, "table", id="table-injection"),
        pytest.param('postgresql://h/db?table=a"b', None, "table", id="table-quote"),
        pytest.param("questdb://h:8812/?colour=red", None, "colour", id="unknown-option"),
        pytest.param("questdb://h:8812/?pool_size=0", None, "pool_size", id="pool-size-zero"),
        pytest.param("questdb://h:8812/?http_port=1&http_port=2", None, "http_port", id="repeated-option"),
        pytest.param("questdb://h:8812/?wal_apply_timeout_ms=-1", None, "wal_apply_timeout_ms", id="negative"),
        pytest.param(
            "questdb://h:8812/?export_keepalive_ms=61000", None, "export_keepalive_ms", id="keepalive-too-long"
        ),
        pytest.param("questdb://h:8812/?http_user=a;b", None, "http_user", id="ilp-conf-injection"),
        pytest.param("questdb://h:8812/?x", None, "query", id="malformed-query"),
        pytest.param("questdb://h:8812/#frag", None, "fragment", id="fragment"),
        pytest.param("postgresql://h/a/b", None, "database", id="database-with-slash"),
        pytest.param("postgresql:///db", None, "host", id="postgres-no-host"),
        pytest.param("postgresql://h/db?pool_size=1000", None, "pool_size", id="pool-size-too-big"),
        pytest.param("sqlite:///", None, "path", id="sqlite-no-path"),
        pytest.param("sqlite:///:memory:", None, "path", id="sqlite-memory"),
        pytest.param("sqlite://host/x.db", None, "host", id="sqlite-host"),
        pytest.param("sqlite:///x.db?busy_timeout_ms=soon", None, "busy_timeout_ms", id="sqlite-busy-timeout"),
        pytest.param("sqlite:///x.db?pool_size=2", None, "pool_size", id="sqlite-unknown-option"),
        pytest.param("memory://somewhere", None, "path", id="memory-with-path"),
        pytest.param("sqlite:///x.db", "questdb", "kind", id="kind-mismatch"),
        pytest.param("postgresql://h/db", "oracle", "kind", id="kind-unknown"),
    ],
)
def test_bad_dsns_name_the_field(dsn, kind, field):
    """Each malformed DSN raises StorageConfigError (a ValueError) whose field and message name the culprit."""
    with pytest.raises(StorageConfigError) as caught:
        parse_dsn(dsn, kind=kind)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert repr(field) in str(caught.value)


def test_questdb_dsn_defaults():
    """A bare questdb:// DSN means admin/quest, PG port 8812, ILP/HTTP port 9000, table ohlcv."""
    parsed = parse_dsn("questdb://127.0.0.1")
    assert (parsed.kind, parsed.user, parsed.password, parsed.port, parsed.http_port, parsed.table) == (
        "questdb",
        "admin",
        "quest",
        8812,
        9000,
        "ohlcv",
    )
    assert parsed.pg_dsn() == "postgresql://admin:quest@127.0.0.1:8812/qdb"
    assert parsed.ilp_conf() == "http::addr=127.0.0.1:9000;"


def test_questdb_dsn_with_every_option():
    """Ports, credentials, table, pool size, timeouts and ILP credentials are all read from the DSN."""
    parsed = parse_dsn(
        "questdb://u%40x:p%2Fw@db.example:18812/?http_port=19000&table=bars&pool_size=8"
        "&wal_apply_timeout_ms=5000&retry_timeout_ms=100&http_host=ingest.example&http_user=w&http_password=s"
        "&export_keepalive_ms=0"
    )
    assert parsed.export_keepalive_ms == 0
    assert parse_dsn("questdb://h:8812/").export_keepalive_ms == 1000
    assert (parsed.user, parsed.password, parsed.host, parsed.port) == ("u@x", "p/w", "db.example", 18812)
    assert (parsed.table, parsed.pool_size, parsed.wal_apply_timeout_ms, parsed.retry_timeout_ms) == (
        "bars",
        8,
        5000,
        100,
    )
    assert parsed.pg_dsn() == "postgresql://u%40x:p%2Fw@db.example:18812/qdb"
    assert parsed.ilp_conf() == "http::addr=ingest.example:19000;username=w;password=s;"


def test_postgresql_dsn_of_a_questdb_with_kind_questdb():
    """A QMTL-style postgresql://admin:quest@host:8812/qdb DSN is a QuestDB when kind='questdb'."""
    parsed = parse_dsn("postgresql://admin:quest@10.0.0.5:8812/qdb", kind="questdb")
    assert (parsed.kind, parsed.host, parsed.port, parsed.http_port, parsed.database) == (
        "questdb",
        "10.0.0.5",
        8812,
        9000,
        "qdb",
    )
    assert parse_dsn("postgresql://admin:quest@h:8812/qdb?http_port=9100", kind="questdb").http_port == 9100


def test_postgres_dsn_passes_driver_options_through():
    """Options the storage does not know go to asyncpg for PostgreSQL (e.g. sslmode), and the port defaults."""
    parsed = parse_dsn("postgres://me@h/market?sslmode=disable&table=bars")
    assert (parsed.kind, parsed.port, parsed.table) == ("postgres", 5432, "bars")
    assert parsed.pg_dsn() == "postgresql://me@h:5432/market?sslmode=disable"


@pytest.mark.parametrize(
    ("dsn", "path"),
    [
        ("sqlite:///seamless.db", "seamless.db"),
        ("sqlite:///data/x.db", "data/x.db"),
        ("sqlite:////tmp/x.db", "/tmp/x.db"),
    ],
)
def test_sqlite_paths_follow_the_three_and_four_slash_rule(dsn, path):
    """sqlite:///rel.db is relative to the working directory, sqlite:////abs.db absolute."""
    assert parse_dsn(dsn).path == path


def test_passwords_never_appear_in_messages():
    """Redacted DSNs and errors hide passwords and ILP tokens."""
    parsed = parse_dsn("questdb://admin:s3cret@h:8812/?http_token=t0ken")
    assert "s3cret" not in parsed.redacted() and "s3cret" not in repr(parsed)
    assert "t0ken" not in repr(parsed)
    with pytest.raises(StorageConfigError) as caught:
        parse_dsn("questdb://admin:s3cret@h:8812/?http_password=a;b")
    assert "a;b" not in str(caught.value) and "s3cret" not in str(caught.value)


async def test_unreachable_server_is_reported_with_its_redacted_address(unused_tcp_port):
    """Opening a DSN nobody answers raises StorageUnavailableError naming host and port, not the password."""
    dsn = f"postgresql://u:s3cret@127.0.0.1:{unused_tcp_port}/db?retry_timeout_ms=0"
    with pytest.raises(StorageUnavailableError) as caught:
        await open_storage(dsn)
    assert f"127.0.0.1:{unused_tcp_port}" in str(caught.value)
    assert "s3cret" not in str(caught.value)
