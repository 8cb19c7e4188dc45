"""alert_rules.yml is valid and every alert is proven by promtool unit tests to fire and to stay quiet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from . import prom_kit

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alert_rules.yml"
UNIT_TESTS = ROOT / "tests" / "alerts" / "alert_rules_test.yml"


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs it (apt-get install prometheus)")
    return path


def test_promtool_check_rules_passes():
    """promtool accepts the rules file."""
    out = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass():
    """Every promtool unit test (firing and quiet cases) passes."""
    out = subprocess.run([_promtool(), "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    """Each alert of a seamless-* group is exercised by at least one firing and one quiet unit test."""
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert all(g["name"].startswith("seamless-") for g in rules["groups"])
    firing, quiet = set(), set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == alerts
    # a spike alert's quiet case is the other flag in its firing test (only one label set fires)
    assert alerts - quiet <= {"SeamlessConformanceFlagSpike"}


def test_runbook_anchors_exist():
    """Each alert's runbook annotation points at a heading of docs/runbook.md."""
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-") for h in re.findall(r"^#+ (.+)$", runbook, re.M)
    }
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            anchor = rule["annotations"]["runbook"].split("#")[1]
            assert anchor in anchors, f"{rule['alert']}: docs/runbook.md has no section #{anchor}"


def test_the_live_test_rules_are_the_real_rules_on_a_short_clock(tmp_path: Path) -> None:
    """prom_kit's override keeps every rule (names, labels, shape), scales each duration by TIME_SCALE and still
    passes `promtool check rules`, so the live test exercises alert_rules.yml itself."""
    real = yaml.safe_load(RULES.read_text())
    scaled = prom_kit.scaled_rules()
    path = tmp_path / "scaled.yml"
    path.write_text(yaml.safe_dump(scaled))
    out = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    pairs = [
        (r, s)
        for g, h in zip(real["groups"], scaled["groups"], strict=True)
        for r, s in zip(g["rules"], h["rules"], strict=True)
    ]
    assert pairs
    for rule, short in pairs:
        assert (rule["alert"], rule["labels"], rule["annotations"]) == (
            short["alert"],
            short["labels"],
            short["annotations"],
        )
        if "for" in rule:
            assert short["for"] == prom_kit.scale_duration(rule["for"]) != rule["for"]
        assert "m]" not in short["expr"] and re.sub(r"\[[0-9a-z]+\]|\d+(\.\d+)?", "", rule["expr"]) == re.sub(
            r"\[[0-9a-z]+\]|\d+(\.\d+)?", "", short["expr"]
        )
    assert prom_kit.scale_duration("15m") == "30000ms" and prom_kit.scale_duration("1m") == "2000ms"
