"""deploy/grafana/dashboards/seamless.json reads only metrics the code emits, and docker-compose.yml provisions it.

The emitted names come from the real collectors (the coordinator's, the worker's and the provider's registries),
never from a hand list; only ``up`` (Prometheus' own) is added.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from coordinator.metrics import ClusterFigures, CoordinatorMetrics
from provider.core.obs import new_registry
from provider.metrics import ProviderMetrics
from worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "seamless.json"
#: Series Prometheus makes itself.
PROMETHEUS_OWN = {"up"}
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def emitted_names() -> set[str]:
    """Every sample name the coordinator, worker and provider registries can expose."""
    figures = ClusterFigures(
        is_leader=True,
        term=1,
        commit_index=1,
        table={
            "jobs_running": [("job-1", "ohlcv:x:A/B:1m", 1, 2)],
            "jobs_other": (1, 0, 1),
            "windows": {"pending": 1},
            "leases_active": 0,
            "stale_claims_total": 0,
            "token": 1,
        },
    )
    registries = [
        CoordinatorMetrics(new_registry(), lambda: figures).registry,
        WorkerMetrics().registry,
        ProviderMetrics().registry,
    ]
    names = set(PROMETHEUS_OWN)
    for registry in registries:
        for family in registry.collect():
            names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels and durations left out)."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", text):
        if match.group(2) is None and match.group(1) not in _KEYWORDS:
            names.add(match.group(1))
    return names


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("histogram_quantile(0.99, sum by (le, phase) (rate(a_bucket[5m]))) > 30", {"a_bucket"}),
        ('max by (state) (b{state="x y"}) and on () (max(c) == 0)', {"b", "c"}),
        ("sum(rate(d_total[5m])) / (sum(rate(d_total[5m])) + sum(rate(e_total[5m])))", {"d_total", "e_total"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    """The extractor finds the metric names and nothing else (not functions, labels, keywords or durations)."""
    assert metric_names(expr) == names


def test_every_dashboard_query_reads_only_emitted_metrics() -> None:
    """Each PromQL expression of the dashboard names metrics some registry of the code exposes."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    emitted = emitted_names()
    exprs = expressions(dashboard)
    assert len(exprs) >= 10
    unknown = {(title, name) for title, expr in exprs for name in metric_names(expr) if name not in emitted}
    assert not unknown, f"dashboard reads metrics nothing emits: {sorted(unknown)}"
    used = {name for _, expr in exprs for name in metric_names(expr)}
    # The panels the issue asks for: cluster health, job progress, windows by state, bars/s, latency, flags.
    for needed in (
        "coordinator_is_leader",
        "backfill_completion_ratio",
        "backfill_windows",
        "worker_rows_written_total",
        "seamless_sla_deadline_seconds_bucket",
        "seamless_conformance_flag_total",
    ):
        assert needed in used, needed


def test_a_misspelled_metric_would_be_caught() -> None:
    """The check is not vacuous: a name one letter off is not among the emitted names."""
    assert "backfill_window" not in emitted_names() and "backfill_windows" in emitted_names()


def test_compose_provisions_the_dashboard_and_its_datasource() -> None:
    """docker-compose.yml mounts the dashboards and provisioning directories into Grafana, whose datasource is the
    compose Prometheus, and the provider loads the folder the dashboard is in."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    grafana = compose["services"]["grafana"]
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in grafana["volumes"]}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards_at = mounts["./deploy/grafana/dashboards"]
    assert (ROOT / "deploy" / "grafana" / "dashboards" / DASHBOARD.name).exists()
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "seamless.yml").read_text(encoding="utf-8"))
    assert [p["options"]["path"] for p in providers["providers"]] == [dashboards_at]
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8"))
    prometheus_port = compose["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert [s["url"] for s in sources["datasources"]] == [f"http://prometheus:{prometheus_port}"]
    assert "prometheus" in grafana["depends_on"]
