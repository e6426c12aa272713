"""The hot path: inference requests served straight from ASGI.

A single-row request does little work (parse a small JSON, queue a row, write a
small JSON), so the framework around it dominates its cost. On a 2-core machine
a bare ASGI app answers about 7,000 requests/s and the same through Starlette's
Request/middleware/router stack about 4,300 — before any inference. So the two
routes that carry the load,

* ``POST /v2/models/{name}[/versions/{v}]/infer``
* ``POST /json``

are dispatched here by :class:`FastPath`, an ASGI wrapper placed in front of
the Starlette app. It matches the path with string operations, reads the body
from ``receive`` (with the size limit), calls the handler with a small
:class:`Call`, and sends the :class:`Reply` in two ASGI messages. Errors are
mapped exactly as in the Starlette app (:func:`.http.reply_for`, 500 for a
bug). Every other route, and any other method on these paths, goes to
Starlette, which serves the same handlers (:func:`.endpoints.route`) when this
wrapper is not in front of it.

Under ``mlaas4hep serve`` these routes do not even reach ASGI: the HTTP
protocol (:mod:`.httpfront`) finds this wrapper behind uvicorn's middleware and
calls :meth:`FastPath.match` and :meth:`FastPath.answer` itself. This wrapper
serves them for any other ASGI server (and the h11 protocol).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import Mlaas4hepError
from .dataplane import DataPlane
from .errors import ClientGone
from .http import Call, Handler, Reply, error_reply, reply_for

log = logging.getLogger("mlaas4hep.serve")


INFER_ROUTE = "/v2/models/{name}/infer"
INFER_VERSION_ROUTE = "/v2/models/{name}/versions/{version}/infer"


class FastPath:
    """ASGI wrapper serving the inference routes itself and passing everything else to ``app``.

    :mod:`.httpfront` serves the same routes without ASGI, through :meth:`match` and :meth:`answer`.
    """

    def __init__(self, app: Any, plane: DataPlane, infer: Handler, tfaas_json: Handler):
        self.app, self.plane = app, plane
        self._infer, self._json = infer, tfaas_json

    @property
    def state(self) -> DataPlane:  # what tests and tools knew as the app's state
        return self.plane

    def match(self, path: str) -> tuple[Handler, str, dict[str, str]] | None:
        """The handler, route template and path parameters of a ``POST`` to ``path``; None: not ours."""
        if path == "/json":
            return self._json, "/json", {}
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            parts = path[11:-6].split("/")
            if len(parts) == 1 and parts[0]:
                return self._infer, INFER_ROUTE, {"name": parts[0]}
            if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                return self._infer, INFER_VERSION_ROUTE, {"name": parts[0], "version": parts[2]}
        return None

    async def answer(self, handler: Handler, route: str, path: str, call: Call) -> Reply | None:
        """The reply to one call, errors mapped as the Starlette app maps them; None when the
        client went away before its body was read (counted as 499: nobody to answer)."""
        plane = self.plane
        try:
            with plane.admitted():  # counted from its arrival, for the batchers
                return await handler(plane, call)
        except ClientGone:
            plane.metrics.http_request(route, "POST", 499)
            return None
        except Mlaas4hepError as err:
            return reply_for(err)
        except Exception as err:  # a bug of ours: log it, answer 500, keep serving
            log.exception("internal error on POST %s", path, exc_info=err)
            return error_reply(500, f"internal server error: {type(err).__name__}")

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            found = self.match(scope["path"])
            if found is not None:
                return await self._serve(*found, scope, receive, send)
        await self.app(scope, receive, send)

    async def _serve(
        self,
        handler: Handler,
        route: str,
        params: dict[str, str],
        scope: dict[str, Any],
        receive: Callable[..., Any],
        send: Callable[..., Any],
    ) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        reply = await self.answer(handler, route, scope["path"], Call(params, headers, receive))
        if reply is None:
            return
        raw_headers = [
            (b"content-type", reply.content_type.encode()),
            (b"content-length", str(len(reply.body)).encode()),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": reply.body})
        self.plane.metrics.http_request(route, "POST", reply.status)
