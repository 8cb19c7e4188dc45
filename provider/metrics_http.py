"""An opt-in HTTP endpoint that serves a provider's Prometheus registry, so Prometheus can scrape a strategy process.

Rules:
1. Nothing listens unless the caller asks: ``await provider.serve_metrics(port)`` (or
   ``serve_metrics(registry, port=...)`` for a registry several providers share). Defaults bind 127.0.0.1;
   ``port=0`` picks a free port (``server.port`` says which).
2. ``GET /metrics`` answers the registry in the Prometheus text format, ``GET /healthz`` answers ``{"status": "ok"}``,
   like the worker's endpoint; no auth (bind to loopback or a private network).
3. ``await server.aclose()`` stops it; a provider closes the server it started in its own ``aclose()``.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry

from provider.core.obs import METRICS_CONTENT_TYPE, metrics_text

__all__ = ["MetricsServer", "serve_metrics"]


@dataclass
class MetricsServer:
    """A running metrics endpoint."""

    host: str
    port: int
    _runner: web.AppRunner

    @property
    def url(self) -> str:
        """The full ``/metrics`` URL."""
        return f"http://{self.host}:{self.port}/metrics"

    async def aclose(self) -> None:
        """Stop listening; calling it again does nothing."""
        await self._runner.cleanup()


async def serve_metrics(registry: CollectorRegistry, *, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` at ``http://HOST:PORT/metrics`` until ``aclose()``."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"metrics port {port!r} must be an int from 0 to 65535 (0 picks a free port)")

    async def metrics_route(_: web.Request) -> web.Response:
        return web.Response(body=metrics_text(registry), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def health_route(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/healthz", health_route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    return MetricsServer(host, bound_port, runner)
