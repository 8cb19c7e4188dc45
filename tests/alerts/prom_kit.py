"""A real ``prometheus`` server for the live alert test, configured from the repo's own files.

Rules:
1. The override files are generated from prometheus.yml and alert_rules.yml, never copied by hand: every
   duration (``for:`` and range selectors like ``[15m]``) is multiplied by ``TIME_SCALE``, and the one threshold
   that is itself a duration (the SLA p99 in seconds) is scaled the same way, so each rule keeps its shape on a
   short clock. Scrape and evaluation intervals become 1 s.
2. Scrape targets are replaced job by job (coordinator, worker, provider); a job of prometheus.yml the test does
   not map is an error, so a new scrape job cannot go untested.
   A job's ``authorization.credentials_file`` (the coordinators' reader token) points at a token file in the test's
   directory instead; the live cluster runs without tokens, so the nodes ignore it and show the per-job series.
3. The server runs in its own session on a free loopback port and is killed at teardown.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alert_rules.yml"
PROM_CONFIG = ROOT / "prometheus.yml"
#: One minute of the real rules lasts two seconds here.
TIME_SCALE = 1 / 30
_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
#: The SLA rule compares a latency in seconds: ``... > 30``.
_SLA_THRESHOLD = re.compile(r"(seamless_sla_deadline_seconds_bucket.*\)\s*>\s*)(\d+(?:\.\d+)?)", re.S)


def scale_duration(text: str) -> str:
    """``15m`` -> ``30s`` (TIME_SCALE), in whole milliseconds."""
    total_s = sum(int(n) * _UNITS_S[unit] for n, unit in _DURATION.findall(text))
    return f"{max(1, round(total_s * TIME_SCALE * 1000))}ms"


def scaled_rules(source: Path = RULES) -> dict[str, Any]:
    """alert_rules.yml with every duration and the SLA threshold scaled by TIME_SCALE."""
    rules = yaml.safe_load(source.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = scale_duration(str(rule["for"]))
            expr = re.sub(r"\[([0-9msdh]+)\]", lambda m: f"[{scale_duration(m.group(1))}]", rule["expr"])
            expr = _SLA_THRESHOLD.sub(lambda m: f"{m.group(1)}{float(m.group(2)) * TIME_SCALE:g}", expr)
            rule["expr"] = expr
    return rules


def scaled_config(
    targets: dict[str, list[str]], rules_path: Path, credentials: Path, source: Path = PROM_CONFIG
) -> dict[str, Any]:
    """prometheus.yml with 1 s intervals, the generated rules file, loopback targets per job and ``credentials`` as
    every job's bearer token file."""
    config = yaml.safe_load(source.read_text(encoding="utf-8"))
    config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules_path)]
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name not in targets:
            raise AssertionError(f"prometheus.yml job {name!r} has no loopback target in the live alert test")
        for key in [k for k in job if k.endswith("_sd_configs")]:
            del job[key]
        job["static_configs"] = [{"targets": targets[name]}]
        if "credentials_file" in job.get("authorization", {}):
            job["authorization"]["credentials_file"] = str(credentials)
    return config


def _unix_s(stamp: str) -> float:
    """Unix seconds of an RFC 3339 time with up to nanoseconds (``2026-12-04T17:04:32.607288896Z``)."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp()
    return whole + (float(f"0.{frac}") if frac else 0.0)


def http_get(url: str, timeout_s: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as answer:
        return json.loads(answer.read())


@dataclass
class Prometheus:
    """One ``prometheus`` process on loopback."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @classmethod
    def start(cls, root: Path, targets: dict[str, list[str]], port: int) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise AssertionError("the prometheus binary is missing: `make test` installs it (apt package prometheus)")
        rules_path = root / "alert_rules.test.yml"
        rules_path.write_text(yaml.safe_dump(scaled_rules(), sort_keys=False), encoding="utf-8")
        config_path = root / "prometheus.test.yml"
        credentials = root / "scrape_token.txt"
        credentials.write_text("reader-token-of-the-live-alert-test\n", encoding="utf-8")
        config = scaled_config(targets, rules_path, credentials)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        log_path = root / "prometheus.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(proc, f"http://127.0.0.1:{port}", log_path)

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def api(self, path: str) -> Any:
        answer = http_get(f"{self.url}/api/v1/{path}")
        assert answer["status"] == "success", answer
        return answer["data"]

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])

    def targets_up(self) -> dict[str, bool]:
        return {t["scrapeUrl"]: t["health"] == "up" for t in self.api("targets")["activeTargets"]}

    def query(self, promql: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        return list(self.api(f"query?query={quote(promql)}")["result"])

    def evaluated_after(self, unix_s: float) -> bool:
        """True once every rule group has been evaluated after ``unix_s`` (Unix time)."""
        stamps = [group["lastEvaluation"] for group in self.api("rules")["groups"]]
        return bool(stamps) and all(_unix_s(stamp) > unix_s for stamp in stamps)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
