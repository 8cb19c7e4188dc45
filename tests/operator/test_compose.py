"""docker-compose.yml agrees with the real CLIs and with itself: flags, peers, ports, secrets, scrape targets and
the alert rule file. No Docker engine is needed: the file is parsed and checked against the click commands."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
import pytest
import yaml

from coordinator.cli import main as coordinator_main
from worker.cli import main as worker_main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
CLIS: dict[str, click.Group] = {"coordinator": coordinator_main, "worker": worker_main}


def _program(service: dict[str, Any]) -> str | None:
    entrypoint = service.get("entrypoint")
    return entrypoint[0] if entrypoint else None


def _ours(program: str) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in SERVICES.items() if _program(svc) == program}


def parse_command(program: str, argv: list[str]) -> dict[str, str | bool]:
    """Check ``argv`` against the real click command and return {option name: value}; fail on anything unknown."""
    group = CLIS[program]
    command = group.commands.get(argv[0])
    assert command is not None, f"{program} has no subcommand {argv[0]!r}"
    options = {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}
    values: dict[str, str | bool] = {}
    tokens = list(argv[1:])
    while tokens:
        token = tokens.pop(0)
        flag, _, inline = token.partition("=")
        param = options.get(flag)
        assert param is not None, f"`{program} {argv[0]}` has no option {flag}"
        if param.is_flag:
            values[param.name or flag] = True
            continue
        value = inline or tokens.pop(0)
        assert not value.startswith("--"), f"{flag} lacks a value"
        if not isinstance(param.type, click.Path):
            param.type.convert(value, param, None)  # raises click.BadParameter for e.g. a bad port
        values[param.name or flag] = value
    missing = [p.name for p in command.params if isinstance(p, click.Option) and p.required and p.name not in values]
    assert not missing, f"`{program} {argv[0]}` lacks required options {missing}"
    return values


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of each published port."""
    found = []
    for spec in service.get("ports", []):
        ip, host_port, container_port = str(spec).split(":")
        found.append((ip, int(host_port), int(container_port)))
    return found


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


COORDINATORS = {name: parse_command("coordinator", svc["command"]) for name, svc in _ours("coordinator").items()}
WORKERS = {name: parse_command("worker", svc["command"]) for name, svc in _ours("worker").items()}


def test_the_services_are_all_there() -> None:
    """QuestDB, three coordinators, one worker service and Prometheus are defined; ours use the repo's image."""
    assert sorted(COORDINATORS) == ["coordinator-1", "coordinator-2", "coordinator-3"]
    assert list(WORKERS) == ["worker"]
    assert SERVICES["questdb"]["image"].startswith("questdb/questdb:")
    assert SERVICES["prometheus"]["image"].startswith("prom/prometheus:")
    for name in [*COORDINATORS, *WORKERS]:
        assert SERVICES[name]["build"] == "." and SERVICES[name]["image"] == "seamless-data-provider:local", name


@pytest.mark.parametrize("program", ["coordinator", "worker"])
def test_parse_command_rejects_what_the_cli_would(program: str) -> None:
    """The checker itself fails on an unknown flag, a missing required option and a malformed value."""
    good = next(iter(_ours(program).values()))["command"]
    with pytest.raises(AssertionError, match="no option --bogus"):
        parse_command(program, [*good, "--bogus", "1"])
    with pytest.raises(AssertionError, match="no subcommand"):
        parse_command(program, ["nope", *good[1:]])
    required = "--node-id" if program == "coordinator" else "--coordinator"
    index = good.index(required)
    with pytest.raises(AssertionError, match="lacks required"):
        parse_command(program, good[:index] + good[index + 2 :])
    if program == "worker":
        index = good.index("--metrics-port")
        with pytest.raises(click.BadParameter):
            parse_command(program, [*good[: index + 1], "99999", *good[index + 2 :]])


def test_coordinators_name_each_other_as_raft_peers() -> None:
    """Each node's --raft is its own service name, --peers lists exactly the other nodes' --raft, ids are unique."""
    rafts = {name: args["raft_addr"] for name, args in COORDINATORS.items()}
    for name, args in COORDINATORS.items():
        assert SERVICES[name]["hostname"] == name == args["node_id"]
        assert hostport(str(args["raft_addr"]))[0] == name
        peers = set(str(args["peers"]).split(","))
        assert peers == {addr for other, addr in rafts.items() if other != name}
        assert hostport(str(args["http_addr"]))[0] == name, "announced HTTP address must be reachable by peers"


def test_non_loopback_binds_carry_tokens_and_the_cluster_secret_from_compose_secrets() -> None:
    """Every coordinator has --token-file and --cluster-secret-file, and every secret path is a declared secret."""
    for name, args in [*COORDINATORS.items(), *WORKERS.items()]:
        files = [str(args[key]) for key in ("token_file", "cluster_secret_file") if key in args]
        if name in COORDINATORS:
            assert len(files) == 2, f"{name}: non-loopback binds need both files (serve refuses otherwise)"
        else:
            assert files, f"{name}: the worker needs a token for an auth-enabled cluster"
        for path in files:
            assert path.startswith("/run/secrets/"), path
            secret = path.removeprefix("/run/secrets/")
            assert secret in SERVICES[name]["secrets"] and secret in COMPOSE["secrets"], (name, secret)
            assert COMPOSE["secrets"][secret]["file"].startswith("./deploy/secrets/")
    assert (ROOT / "deploy" / "secrets" / ".gitignore").read_text(encoding="utf-8").splitlines()[-2:] == [
        "*",
        "!.gitignore",
    ], "generated secrets are never committed"


def test_the_worker_reaches_every_coordinator_and_questdb() -> None:
    """The worker's --coordinator URLs are the coordinators' --http addresses; --storage points at QuestDB's ports."""
    args = WORKERS["worker"]
    urls = str(args["coordinator_urls"]).split(",")
    assert sorted(urls) == sorted(f"http://{a['http_addr']}" for a in COORDINATORS.values())
    dsn = urlsplit(str(args["storage_dsn"]))
    assert (dsn.scheme, dsn.hostname, dsn.port) == ("questdb", "questdb", 8812)
    assert parse_qs(dsn.query)["http_port"] == ["9000"]
    assert {port for _, _, port in published(SERVICES["questdb"])} == {8812, 9000}
    assert str(args["source"]).split(":")[0] == "binance"
    assert SERVICES["worker"]["deploy"]["replicas"] >= 1 and "ports" not in SERVICES["worker"], "scalable"


def test_published_ports_are_loopback_and_map_to_the_http_ports() -> None:
    """Every published port binds 127.0.0.1; coordinators publish their --http port and never the Raft port."""
    for name, service in SERVICES.items():
        for ip, _, _ in published(service):
            assert ip == "127.0.0.1", name
    host_ports = [host for svc in SERVICES.values() for _, host, _ in published(svc)]
    assert len(host_ports) == len(set(host_ports)), "two services publish the same host port"
    for name, args in COORDINATORS.items():
        inside = {port for _, _, port in published(SERVICES[name])}
        assert inside == {hostport(str(args["http_addr"]))[1]}, name
        assert hostport(str(args["raft_addr"]))[1] not in inside


def _prometheus() -> tuple[dict[str, Any], dict[str, str]]:
    service = SERVICES["prometheus"]
    mounts = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            mounts[target] = source
    config_flag = next(f for f in service["command"] if f.startswith("--config.file="))
    config_target = config_flag.split("=", 1)[1]
    config = yaml.safe_load((ROOT / mounts[config_target]).read_text(encoding="utf-8"))
    return config, {"config": config_target, **mounts}


def test_prometheus_loads_the_alert_rules_and_scrapes_the_real_ports() -> None:
    """The mounted config loads the mounted alert_rules.yml and scrapes the coordinators' and workers' real ports."""
    config, mounts = _prometheus()
    config_dir = mounts["config"].rsplit("/", 1)[0]
    rule_targets = {r if r.startswith("/") else f"{config_dir}/{r}" for r in config["rule_files"]}
    assert {mounts[t] for t in rule_targets} == {"./alert_rules.yml"}
    assert (ROOT / "alert_rules.yml").exists()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for group in jobs["coordinator"]["static_configs"] for t in group["targets"]}
    assert targets == {str(a["http_addr"]) for a in COORDINATORS.values()}
    dns = jobs["worker"]["dns_sd_configs"][0]
    assert dns["names"] == ["worker"] and dns["port"] == int(WORKERS["worker"]["metrics_port"])
    assert WORKERS["worker"]["metrics_host"] == "0.0.0.0", "Prometheus scrapes workers over the compose network"


def test_prometheus_scrapes_the_coordinators_with_a_token_from_a_compose_secret() -> None:
    """The coordinator job sends a bearer token read from a file that compose mounts into the Prometheus container
    from deploy/secrets/ (the coordinators run with --token-file, and /metrics without a token hides job ids)."""
    config, _ = _prometheus()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    authorization = jobs["coordinator"]["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    path = str(authorization["credentials_file"])
    assert path.startswith("/run/secrets/"), path
    secret = path.removeprefix("/run/secrets/")
    assert secret in SERVICES["prometheus"]["secrets"], secret
    assert COMPOSE["secrets"][secret]["file"].startswith("./deploy/secrets/")
    assert all("authorization" not in job for name, job in jobs.items() if name != "coordinator")


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    """`promtool check config` validates prometheus.yml and the rule file it loads (a copy whose credentials file,
    a compose secret in the container, exists here)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs it (apt-get install prometheus)")
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text(encoding="utf-8"))
    for job in config["scrape_configs"]:
        if "credentials_file" in job.get("authorization", {}):
            job["authorization"]["credentials_file"] = str(tmp_path / "token.txt")
    (tmp_path / "token.txt").write_text("reader-token-0123456789\n", encoding="utf-8")
    shutil.copy(ROOT / "alert_rules.yml", tmp_path / "alert_rules.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    done = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout


def test_the_dockerfile_builds_the_image_the_services_run() -> None:
    """The Dockerfile installs the repo on python:3.11-slim, copies only paths that exist, runs `coordinator`."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \. ", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["coordinator"\]$', text, re.MULTILINE)
    for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    for needed in ("pyproject.toml", "coordinator/", "worker/", "provider/"):
        assert f"!{needed}" in ignored
