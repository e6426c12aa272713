"""``/metrics`` on a port of its own (``--metrics-port``, Triton's 8002), as Prometheus scrapers expect.

Triton serves its metrics on a port apart from inference, and the charts and
scrape configurations written for it (SuperSONIC's, KEDA's) point there. The
same metrics stay at ``/metrics`` on the HTTP port. The metrics port is
``prometheus_client``'s own small HTTP server, in a daemon thread, started and
stopped with the app's lifespan; it has no token (as Triton's): bind it where
only the scraper reaches it, or leave it off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class WithMetricsPort:
    """ASGI wrapper: serves the wrapped app's metrics on ``host:port`` for the app's lifespan."""

    def __init__(self, app: Any, host: str, port: int):
        self.app, self.host, self.port = app, host, int(port)
        self._server: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    def start(self) -> None:
        from prometheus_client import start_http_server

        try:
            self._server, _ = start_http_server(
                self.port, self.host, registry=self.app.plane.metrics.registry
            )
        except OSError as err:
            raise RuntimeError(f"metrics cannot listen on {self.host}:{self.port}: {err.strerror}") from None
        self.port = self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def lifespan_receive() -> dict[str, Any]:
            msg: dict[str, Any] = await receive()
            if msg["type"] == "lifespan.startup":
                self.start()  # a failure here fails the startup (uvicorn exits)
            elif msg["type"] == "lifespan.shutdown":
                self.stop()
            return msg

        await self.app(scope, lifespan_receive, send)


def with_metrics_port(app: Any, host: str, port: int) -> WithMetricsPort:
    """``app`` (from :func:`~mlaas4hep.serve.create_app`, maybe wrapped) with its metrics on ``host:port`` too."""
    return WithMetricsPort(app, host, port)
