"""`provider.serve_metrics()`: the opt-in endpoint Prometheus scrapes, and its lifecycle."""

from __future__ import annotations

import aiohttp
import pytest

from provider import SeamlessDataProvider
from provider.metrics_http import serve_metrics


async def test_the_provider_serves_its_registry_until_aclose() -> None:
    """/metrics answers the provider's own collectors (DESIGN names) in the text format; aclose stops it."""
    provider = SeamlessDataProvider(strategy="fail_fast", storage_source="memory://")
    provider.metrics.count_flags({"gap": 3})
    server = await provider.serve_metrics(0)
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Type"].startswith("text/plain")
            text = await answer.text()
        assert 'seamless_conformance_flag_total{flag="gap"} 3.0' in text
        assert "# TYPE seamless_sla_deadline_seconds histogram" in text
        async with session.get(f"http://127.0.0.1:{server.port}/healthz") as answer:
            assert await answer.json() == {"status": "ok"}
        await provider.aclose()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(server.url):
                pass


@pytest.mark.parametrize("port", [-1, 65536, True, "9102"])
async def test_a_bad_port_names_the_value(port: object) -> None:
    """The port must be an int from 0 to 65535; the error says so and names the value."""
    from provider.core.obs import new_registry

    with pytest.raises(ValueError, match=r"metrics port .* must be an int from 0 to 65535"):
        await serve_metrics(new_registry(), port=port)  # type: ignore[arg-type]
