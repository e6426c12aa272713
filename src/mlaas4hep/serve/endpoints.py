"""Starlette endpoints for the data plane's handlers (:data:`.http.Handler`).

Kept out of the compiled modules (:mod:`.native`): Starlette runs an endpoint
as a request handler only when it is a Python function (else it takes it for
an ASGI app), and a function compiled by mypyc is not one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from .http import Call, Handler, plane_of


def route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A Starlette endpoint running ``handler`` (errors go to the app's handlers)."""

    async def endpoint(request: Request) -> Response:
        reply = await handler(plane_of(request), Call.of(request))
        return reply.response()

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint
