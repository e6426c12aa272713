"""Drain on SIGTERM: stop being ready at once, keep answering, then stop (``--drain-seconds``).

Kubernetes sends SIGTERM to a pod it removes, and only then takes it out of the
Service's endpoints and of the load balancer (Envoy, nginx), asynchronously:
for a few seconds new requests still arrive, on open connections and on new
ones. A server that stopped accepting at once would fail them. So, with
``drain_seconds`` > 0, the first SIGTERM

1. turns readiness false at once (HTTP ``/v2/health/ready`` 503, gRPC
   ``ServerReady`` false), while liveness stays true, so probes and balancers
   stop sending work here;
2. keeps serving everything, on open connections and new ones, for
   ``drain_seconds``;
3. then lets uvicorn stop as on any SIGTERM: no new connections, requests in
   flight finish (a few seconds at most), exit status 0.

A second SIGTERM, or Ctrl-C (SIGINT), stops at once. Each worker process of
``--workers N`` drains by itself (uvicorn's supervisor forwards the SIGTERM).
Set ``terminationGracePeriodSeconds`` to ``drain_seconds`` plus about 10 s.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from .lifespan import WithLifespan

log = logging.getLogger("mlaas4hep.serve")
GRPC_GRACE = 5.0  # seconds for gRPC calls in flight when the drain ends


class WithDrain(WithLifespan):
    """ASGI wrapper: installs the draining SIGTERM handler when the app starts."""

    def __init__(self, app: Any, seconds: float):
        super().__init__(app)
        self.seconds = float(seconds)
        self._timer: threading.Timer | None = None

    async def startup(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are the main thread's (an app run by a test harness in a thread)
        stop = signal.getsignal(signal.SIGTERM)  # uvicorn's: it starts the shutdown
        plane = self.app.plane
        loop = asyncio.get_running_loop()
        grpc = _find(self.app, "grpc")

        def on_term(sig: int, frame: Any) -> None:
            if plane.draining or not callable(stop):
                if callable(stop):
                    stop(sig, frame)
                return
            plane.draining = True
            log.warning("SIGTERM: not ready any more; serving %g s more, then stopping", self.seconds)
            self._timer = threading.Timer(self.seconds, _finish, (stop, sig, frame, loop, grpc))
            self._timer.daemon = True
            self._timer.start()

        signal.signal(signal.SIGTERM, on_term)

    async def shutdown(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _find(app: Any, attribute: str) -> Any:
    """The first wrapper around ``app`` with ``attribute`` (e.g. the gRPC server of a ``WithGrpc``)."""
    while app is not None:
        found = getattr(app, attribute, None)  # not vars(): the compiled wrappers have no __dict__
        if found is not None:
            return found
        app = getattr(app, "app", None)
    return None


def _finish(stop: Callable[..., Any], sig: int, frame: Any, loop: Any, grpc: Any) -> None:
    """Stop: gRPC first (its clients' connections are told to go elsewhere, its calls in flight
    finish), then uvicorn as its SIGTERM handler would, but as a normal end: exit status 0
    (uvicorn raises a signal it handled again once stopped, which would make the status -15)."""
    if grpc is not None:
        try:
            asyncio.run_coroutine_threadsafe(grpc.stop(GRPC_GRACE), loop).result(GRPC_GRACE + 5)
        except Exception:  # the loop is gone: uvicorn is stopping anyway
            log.exception("stopping gRPC at the end of the drain")
    server = getattr(stop, "__self__", None)
    if server is not None and hasattr(server, "should_exit"):
        server.should_exit = True
    else:
        stop(sig, frame)


def with_drain(app: Any, seconds: float) -> WithDrain:
    """``app`` (from :func:`~mlaas4hep.serve.create_app`, maybe wrapped) draining ``seconds`` on SIGTERM."""
    return WithDrain(app, seconds)
