"""Users' real data through ``worker run``: every shape of tests/provider/ingest_shapes.py, from a loopback plug-in.

A real coordinator process and a real worker process; the only stand-in is the exchange: a source plug-in
(entry point group ``seamless.sources``, installed as a dist-info on the worker's PYTHONPATH) that serves the
synthetic bars of each window in the shape its series' symbol names. Lossless shapes end stored as the exact
bars; blocked ones end as failed windows (not retried), nothing stored, and a structured log line naming the flag.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from devkit.polling import http_json, wait_for
from devkit.stack import start_stack
from provider.sources import ENTRY_POINT_GROUP
from provider.sources.synthetic import synthetic_bars
from provider.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
SHAPES_PATH = ROOT / "tests" / "provider" / "ingest_shapes.py"
MIN = 60_000
WINDOW_BARS = 100
SPAN = WINDOW_BARS * MIN
T0 = (1_700_000_000_000 // SPAN) * SPAN

PLUGIN = """
    import importlib.util
    import os

    from provider.sources import normalize_request
    from provider.sources.synthetic import synthetic_bars

    _spec = importlib.util.spec_from_file_location("ingest_shapes", os.environ["INGEST_SHAPES_PATH"])
    shapes = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(shapes)

    class ShapesSource:
        name = "shapes"

        def __init__(self, spec, limits):
            self.spec, self.limits = spec, limits

        async def fetch(self, series, start, end):
            request = normalize_request(series, start, end)
            symbol = request.series.symbol
            bars = synthetic_bars(symbol, request.interval_ms, request.start_ms, request.end_ms, seed=3)
            raw, _, _ = shapes.SHAPES[symbol](bars)
            return raw

        async def aclose(self):
            pass

    def open_shapes(spec, *, limits):
        spec.check_params([])
        return ShapesSource(spec, limits)
"""


def _shapes() -> Any:
    spec = importlib.util.spec_from_file_location("ingest_shapes_for_worker_test", SHAPES_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _install_plugin(root: Path) -> None:
    dist = root / "shapes_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shapes-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nshapes = shapes_plugin:open_shapes\n")
    (root / "shapes_plugin.py").write_text(textwrap.dedent(PLUGIN))


def _log_events(text: str) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_every_shape_through_worker_run(tmp_path):
    """Each shape's window ends stored exactly (flag logged) or failed non-retryably (flag logged, nothing stored)."""
    shapes = _shapes()
    plugin_dir = tmp_path / "plugin"
    _install_plugin(plugin_dir)
    dsn = f"sqlite:///{tmp_path / 'bars.db'}"
    stack = await asyncio.to_thread(start_stack, tmp_path, size=1, window_bars=WINDOW_BARS)
    series = {name: f"ohlcv:shapes:{name}:1m" for name in shapes.SHAPES}
    try:
        # Keep the caller's PYTHONPATH after the plugin's, so the worker runs the code under test.
        paths = [str(plugin_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {"PYTHONPATH": os.pathsep.join(paths), "INGEST_SHAPES_PATH": str(SHAPES_PATH)}
        stack.start_worker("shapes", dsn, concurrency=4, env=env)
        jobs = {}
        for name, key in series.items():
            status, body = http_json("POST", f"{stack.urls[0]}/v1/jobs", {"series": key, "start": T0, "end": T0 + SPAN})
            assert status in (200, 201), body
            jobs[name] = body["job"]["job_id"]

        def ended() -> dict[str, dict[str, Any]] | None:
            states = {}
            for name, job_id in jobs.items():
                _, body = http_json("GET", f"{stack.urls[0]}/v1/jobs/{job_id}")
                job = body.get("job", body)
                if job["state"] not in ("done", "failed"):
                    return None
                states[name] = job
            return states

        try:
            states = await asyncio.to_thread(wait_for, ended, 180, "every shape's job to end")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{stack.logs()}") from None
        events = _log_events((tmp_path / "worker0.log").read_text(errors="replace"))
        storage = await open_storage(dsn)
        try:
            for name, shape in shapes.SHAPES.items():
                base = synthetic_bars(name, MIN, T0, T0 + SPAN, seed=3)
                _, expected, flag = shape(base)
                job = states[name]
                lines = [
                    e for e in events if e.get("event") == "worker.window_conformance" and name in e.get("summary", "")
                ]
                if expected is not None:
                    assert job["state"] == "done", (name, job, stack.logs())
                    pd.testing.assert_frame_equal(await storage.read(series[name], T0, T0 + SPAN), expected)
                    if flag is not None:
                        assert lines and flag in lines[0]["report"]["flag_counts"], (name, lines)
                    else:
                        assert not lines, (name, lines)
                else:
                    assert job["state"] == "failed" and job["windows"]["failed"] == 1, (name, job)
                    assert await storage.coverage(series[name]) == []
                    assert lines and flag in lines[0]["report"]["blocking"], (name, lines)
                    failed = [
                        e for e in events if e.get("event") == "worker.window_failed" and name in e.get("reason", "")
                    ]
                    assert len(failed) == 1 and failed[0]["retryable"] is False and flag in failed[0]["reason"]
                    assert "from shapes" in failed[0]["reason"]  # the source that served the blocked window
        finally:
            await storage.aclose()
    finally:
        await asyncio.to_thread(stack.close)
