"""``coordinator status``: ask the cluster over HTTP and render roles and job progress as text tables.

Rules: read-only, synchronous (urllib), every request has a timeout; an unreachable node is shown as ``down``
rather than failing the whole report.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StatusReport", "collect_status", "render_status"]


@dataclass
class StatusReport:
    """What ``status`` prints."""

    leader: str | None = None
    nodes: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _get(url: str, token: str | None, timeout_s: float) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:
        return json.loads(answer.read())


def _first_cluster_view(
    urls: list[str], token: str | None, timeout_s: float, report: StatusReport
) -> tuple[str, dict[str, Any]] | None:
    for base in urls:
        try:
            return base, _get(base + "/v1/cluster", token, timeout_s)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            report.problems.append(f"{base}: {exc}")
    return None


def collect_status(urls: list[str], token: str | None, timeout_s: float = 3.0) -> StatusReport:
    """Ask one node for the members, each member for its own view, and the leader's replica for the jobs."""
    report = StatusReport()
    found = _first_cluster_view(urls, token, timeout_s, report)
    if found is None:
        return report
    base, view = found
    for member in view["members"]:
        row = {
            "node_id": member.get("node_id") or "?",
            "raft": member["raft"],
            "http": member.get("http"),
            "role": "down",
            "term": "-",
            "commit_index": "-",
        }
        if member.get("http"):
            try:
                own = _get(member["http"] + "/v1/cluster", token, timeout_s)
                row.update(role=own["role"], term=own["term"], commit_index=own["commit_index"])
            except (urllib.error.URLError, OSError, ValueError) as exc:
                report.problems.append(f"{member['http']}: {exc}")
        report.nodes.append(row)
    report.leader = view.get("leader")
    source = report.leader or base
    try:
        report.jobs = _get(source + "/v1/jobs", token, timeout_s)["jobs"]
    except (urllib.error.URLError, OSError, ValueError) as exc:
        report.problems.append(f"{source}/v1/jobs: {exc}")
    return report


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def _bar(ratio: float, width: int = 20) -> str:
    filled = round(ratio * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {ratio * 100:5.1f}%"


def render_status(report: StatusReport) -> str:
    """The report as text: a node table, a job table and any problems."""
    out = [f"leader: {report.leader or 'NONE (no leader known)'}", ""]
    out.append(
        _table(
            ["NODE", "ROLE", "TERM", "COMMIT", "RAFT", "HTTP"],
            [
                [n["node_id"], n["role"], str(n["term"]), str(n["commit_index"]), n["raft"], n["http"] or "-"]
                for n in report.nodes
            ],
        )
    )
    out.append("")
    rows = []
    for job in report.jobs:
        w = job["windows"]
        total = sum(w.values())
        rows.append(
            [
                job["job_id"],
                job["series"],
                job["state"] + (" (retired)" if job.get("retired") else ""),
                _bar(job["completion_ratio"]),
                f"{w['done']}/{total}",
                str(w["pending"]),
                str(w["leased"]),
                str(w["failed"]),
            ]
        )
    out.append(
        _table(["JOB", "SERIES", "STATE", "PROGRESS", "DONE", "PENDING", "LEASED", "FAILED"], rows)
        if rows
        else "no jobs"
    )
    if report.problems:
        out += ["", "problems:"] + [f"  {p}" for p in report.problems]
    return "\n".join(out)
