"""``/metrics`` on a port of its own (``--metrics-port``, Triton's 8002), as Prometheus scrapers expect.

Triton serves its metrics on a port apart from inference, and the charts and
scrape configurations written for it (SuperSONIC's, KEDA's) point there. The
same metrics stay at ``/metrics`` on the HTTP port. The metrics port is
``prometheus_client``'s own small HTTP server, in a daemon thread, started and
stopped with the app's lifespan; it has no token (as Triton's): bind it where
only the scraper reaches it, or leave it off.
"""

from __future__ import annotations

from typing import Any

from .lifespan import WithLifespan


class WithMetricsPort(WithLifespan):
    """ASGI wrapper: serves the wrapped app's metrics on ``host:port`` for the app's lifespan."""

    def __init__(self, app: Any, host: str, port: int):
        super().__init__(app)
        self.host, self.port = host, int(port)
        self._server: Any = None

    async def startup(self) -> None:
        from prometheus_client import start_http_server

        try:
            self._server, _ = start_http_server(
                self.port, self.host, registry=self.app.plane.metrics.registry
            )
        except OSError as err:
            raise RuntimeError(f"metrics cannot listen on {self.host}:{self.port}: {err.strerror}") from None
        self.port = self._server.server_port

    async def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def with_metrics_port(app: Any, host: str, port: int) -> WithMetricsPort:
    """``app`` (from :func:`~mlaas4hep.serve.create_app`, maybe wrapped) with its metrics on ``host:port`` too."""
    return WithMetricsPort(app, host, port)
