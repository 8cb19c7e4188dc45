"""schemathesis against /openapi.json of a running 3-node cluster: no 5xx, answers match the schema, and the
cluster is still whole afterwards.

schemathesis' own pytest integration (``schemathesis.pytest.from_fixture``) breaks on pytest 9 (it reads the
removed ``Node._nodeid``), so each operation is a plain parametrized test that drives the operation's Hypothesis
strategy itself; the operations come from ``coordinator.routes.ROUTES``, the list the document is built from.
"""

from __future__ import annotations

import json
import os
import secrets

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi import checks

from coordinator.routes import ROUTES
from devkit.polling import http_json, wait_for

#: Log events that mean the coordinator failed, not the request.
FAILURE_EVENTS = frozenset({"raft.apply_failed", "http.request_failed", "raft.on_applied_failed"})

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: Examples per operation; about a minute for all of them on two cores.
MAX_EXAMPLES = int(os.environ.get("SEAMLESS_FUZZ_EXAMPLES", "60"))
#: The document is looser than the server (it omits ``minLength: 1`` on ids and ``additionalProperties: false`` on
#: bodies, and types ``stale`` as any string), so "schema-valid data must be accepted" does not hold; the server's
#: 400 for such input is the documented answer. Everything else schemathesis checks stays on.
LOOSER_THAN_SERVER = [checks.positive_data_acceptance]
#: Invalid data must be refused with one of these (schemathesis' default list, plus 413): a negative case can be
#: larger than the cluster's ``max_body_bytes`` (a ``complete`` list beyond its ``maxItems`` of 1,000 is), and the
#: server refuses such a body with 413 before reading it; every write route documents that answer.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
CONFIG = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REFUSALS}}})


@pytest.fixture(scope="module")
def api(fuzz_cluster):
    """The cluster's own OpenAPI document, loaded from a follower (so writes also go through forwarding)."""
    leader = fuzz_cluster.wait_leader()
    follower = next(i for i in range(3) if i != leader)
    base = fuzz_cluster.nodes[follower].url
    auth = {"Authorization": f"Bearer {fuzz_cluster.token}"}
    return schemathesis.openapi.from_url(base + "/openapi.json", config=CONFIG), base, auth


#: Positive cases for every route; negative ones where there is input to break (a body or a path parameter).
#: GET routes take no negative cases: extra query parameters are legitimately ignored, which schemathesis
#: would count as "schema-violating request accepted".
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
CASES = [
    pytest.param(route, mode, id=f"{route.method} {route.path} {mode.value}")
    for route in ROUTES
    for mode in (POSITIVE, NEGATIVE)
    if mode is POSITIVE or (route.method != "GET" and (route.request or "{" in route.path))
]
EXAMPLES = {POSITIVE: MAX_EXAMPLES, NEGATIVE: MAX_EXAMPLES // 2}


@pytest.mark.parametrize(("route", "mode"), CASES)
def test_operation_conforms_to_its_schema(api, route, mode):
    """Valid and invalid generated requests never get a 5xx, invalid ones are refused with a 4xx, and every answer
    matches the documented schema."""
    schema, base, auth = api
    operation = schema[route.path][route.method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(base_url=base, headers=auth, timeout=10, excluded_checks=LOOSER_THAN_SERVER)

    fuzz()


def test_cluster_is_whole_after_fuzzing(fuzz_cluster):
    """After the fuzzing every node is up, one leader rules, replicas agree, no request hit an internal error, and a
    fresh job still runs from claim to completion."""
    cluster = fuzz_cluster
    assert all(node.alive for node in cluster.nodes), cluster.logs()
    leader = cluster.wait_leader(30)

    def replicas_agree():
        views = []
        for node in cluster.nodes:
            jobs = http_json("GET", node.url + "/v1/jobs", token=cluster.token)
            leases = http_json("GET", node.url + "/v1/leases", token=cluster.token)
            floor = http_json("GET", node.url + "/v1/cluster", token=cluster.token)[1]["token_floor"]
            views.append((jobs, [dict(x, stale=None) for x in leases[1]["leases"]], floor))
        return all(v == views[0] for v in views) and views[0]

    (status, body), _, _ = wait_for(replicas_agree, 30, "the replicas to agree")
    assert status == 200
    for job in body["jobs"]:
        total = sum(job["windows"].values())
        assert total > 0 and job["completion_ratio"] == pytest.approx(job["windows"]["done"] / total), job
    url = cluster.nodes[leader].url
    for job in body["jobs"]:  # fuzzed jobs may hold thousands of windows of any priority: stop offering them
        if job["state"] == "running":
            assert http_json("DELETE", url + f"/v1/jobs/{job['job_id']}", token=cluster.token)[0] == 200
    series = f"ohlcv:fuzz:AFTER{secrets.token_hex(3).upper()}/USDT:1m"
    status, created = http_json(
        "POST", url + "/v1/jobs", {"series": series, "start": 0, "end": 3 * 3_600_000}, token=cluster.token
    )
    assert status == 201, created
    status, answer = http_json(
        "POST", url + "/v1/windows/claim", {"worker_id": "after", "max_windows": 10}, token=cluster.token
    )
    assert status == 200 and len(answer["leases"]) == 3, answer
    for lease in answer["leases"]:
        body = {"lease_id": lease["lease_id"], "token": lease["token"], "rows": 60}
        assert http_json("POST", url + "/v1/windows/complete", body, token=cluster.token)[0] == 200
    status, job = http_json("GET", url + f"/v1/jobs/{created['job']['job_id']}", token=cluster.token)
    assert job["job"]["state"] == "done" and job["job"]["completion_ratio"] == 1.0, job
    # Judge the log records, not their text: Hypothesis draws strings from constants in our source, so a refused
    # request's logged message may well contain "raft.apply_failed" as a field name it was sent.
    lines = "".join(node.log_path.read_text(errors="replace") for node in cluster.nodes).splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [line for line in lines if not line.startswith("{") and line.strip()] == [], "non-JSON output (a traceback?)"
    bad = [r for r in records if r.get("event") in FAILURE_EVENTS or "exception" in r]
    assert bad == [], bad[:3]
