"""Bearer-token roles, the encrypted Raft transport, and the serve command's refusal of insecure binds."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from coordinator.auth import TokenTable
from coordinator.cli import main
from coordinator.errors import AuthError
from devkit.api import call
from devkit.cluster import MIN, SERIES, Cluster
from devkit.launcher import coordinator_cmd
from devkit.polling import http_json, wait_for
from devkit.ports import free_port

READER = "reader-token-0123456789"
WORKER = "worker-token-0123456789"
OPERATOR = "operator-token-0123456789"
TOKENS = [f"{READER} reader", f"{WORKER} worker pool-a", "# operators", f"{OPERATOR} operator alice"]


@pytest.fixture
def secure(cluster_factory: Callable[..., Cluster]) -> Cluster:
    cluster = cluster_factory(token_lines=TOKENS, secret="cluster-secret-0123456789")
    cluster.token = READER
    cluster.wait_leader()
    return cluster


@pytest.mark.cluster
async def test_roles_on_an_encrypted_cluster(secure: Cluster, http: aiohttp.ClientSession) -> None:
    """Missing/unknown tokens are 401, weaker roles 403; allowed calls succeed through followers too."""
    leader = secure.wait_leader()
    follower = secure.urls[(leader + 1) % 3]
    status, body = await call(http, "GET", follower + "/v1/jobs")
    assert (status, body["error"]["code"], body["error"]["field"]) == (401, "unauthorized", "Authorization")
    status, body = await call(http, "GET", follower + "/v1/jobs", token="not-a-known-token-at-all")
    assert status == 401
    assert (await call(http, "GET", follower + "/v1/jobs", token=READER))[0] == 200
    job = {"series": SERIES, "start": 0, "end": 30 * MIN}
    status, body = await call(http, "POST", follower + "/v1/windows/claim", {"worker_id": "w"}, token=READER)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    assert (await call(http, "POST", follower + "/v1/jobs", job, token=READER))[0] == 403
    status, body = await call(http, "POST", follower + "/v1/jobs", job, token=WORKER)  # providers submit jobs
    assert status == 201, body
    status, body = await call(http, "DELETE", follower + "/v1/jobs/job-1", token=WORKER)
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await call(http, "POST", follower + "/v1/windows/claim", {"worker_id": "w"}, token=WORKER)
    assert status == 200 and len(body["leases"]) == 1
    status, body = await call(
        http, "POST", follower + "/v1/leases/claim", {"key": "a:b:c", "lease_ms": 1000}, token=WORKER
    )
    assert status == 200
    for path in ("/healthz", "/health", "/metrics", "/openapi.json"):
        assert (await call(http, "GET", follower + path))[0] == 200, path
    job_id = (await call(http, "GET", follower + "/v1/jobs", token=READER))[1]["jobs"][0]["job_id"]
    wait_for(
        lambda: all(http_json("GET", f"{u}/v1/jobs/{job_id}", token=READER)[0] == 200 for u in secure.urls),
        5,
        "the job on every node (replicated over the encrypted transport)",
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("short reader", "at least 16"),
        (f"{READER} admin", "not one of"),
        (f"{READER} reader\n{READER} worker", "duplicate"),
        (f"{READER}", "TOKEN ROLE"),
        ("# nothing\n\n", "no tokens"),
    ],
)
def test_token_file_errors_name_the_line(text: str, problem: str) -> None:
    """A malformed token file is rejected with a message naming the problem (and the line)."""
    with pytest.raises(ValueError, match=problem):
        TokenTable.parse(text)


def test_token_roles_are_ordered() -> None:
    """operator > worker > reader: a stronger role passes a weaker role's check, never the reverse."""
    table = TokenTable.parse("\n".join(TOKENS))
    assert table.authenticate(f"Bearer {OPERATOR}", "worker").name == "alice"
    assert table.authenticate(f"bearer {WORKER}", "reader").role == "worker"
    with pytest.raises(AuthError) as caught:
        table.authenticate(f"Bearer {WORKER}", "operator")
    assert caught.value.code == "forbidden"
    with pytest.raises(AuthError):
        table.authenticate(f"Basic {OPERATOR}", "reader")


@pytest.mark.parametrize(
    ("flags", "needs"),
    [
        (["--http", "0.0.0.0:18999"], "--token-file"),
        (["--raft", "0.0.0.0:18998"], "--cluster-secret-file"),
        (["--http", "not-an-address"], "HOST:PORT"),
    ],
)
def test_serve_refuses_insecure_or_bad_binds(tmp_path: Path, flags: list[str], needs: str) -> None:
    """serve exits with code 2 and names the missing flag before binding anything."""
    result = CliRunner().invoke(main, ["serve", "--node-id", "x", "--data-dir", str(tmp_path / "d"), *flags])
    assert result.exit_code == 2 and needs in result.output, result.output


def test_the_console_script_refuses_an_insecure_bind(tmp_path: Path) -> None:
    """The installed `coordinator` script itself exits 2 on a non-loopback HTTP bind without tokens."""
    result = subprocess.run(
        [*coordinator_cmd(), "serve", "--node-id", "x", "--data-dir", str(tmp_path / "d"), "--http", "0.0.0.0:18997"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "--token-file" in result.stderr, result.stderr


def test_serve_refuses_a_data_dir_of_another_node(tmp_path: Path) -> None:
    """A data dir remembers its node id; starting a different node on it exits 2."""
    (tmp_path / "node.json").write_text(json.dumps({"node_id": "other", "raft": "127.0.0.1:1"}))
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "--node-id",
            "x",
            "--data-dir",
            str(tmp_path),
            "--raft",
            f"127.0.0.1:{free_port('127.0.0.1')}",
            "--http",
            f"127.0.0.1:{free_port('127.0.0.1')}",
        ],
    )
    assert result.exit_code == 2 and "belongs to" in result.output, result.output


def test_help_everywhere() -> None:
    """`--help` works for the group and every command."""
    for args in ([], ["serve"], ["status"], ["openapi"]):
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
