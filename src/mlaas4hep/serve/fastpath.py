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
Starlette, which serves the same handlers (:func:`.http.route`) when this
wrapper is not in front of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..errors import Mlaas4hepError
from .dataplane import DataPlane
from .errors import ClientGone
from .http import Call, Handler, error_reply, reply_for

log = logging.getLogger("mlaas4hep.serve")


class FastPath:
    """ASGI wrapper serving the inference routes itself and passing everything else to ``app``."""

    def __init__(self, app: Any, plane: DataPlane, infer: Handler, tfaas_json: Handler):
        self.app, self.plane = app, plane
        self._infer, self._json = infer, tfaas_json

    @property
    def state(self) -> DataPlane:  # what tests and tools knew as the app's state
        return self.plane

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == "/json":
                return await self._serve(self._json, "/json", {}, scope, receive, send)
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                parts = path[11:-6].split("/")
                if len(parts) == 1 and parts[0]:
                    return await self._serve(
                        self._infer, "/v2/models/{name}/infer", {"name": parts[0]}, scope, receive, send
                    )
                if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                    return await self._serve(
                        self._infer,
                        "/v2/models/{name}/versions/{version}/infer",
                        {"name": parts[0], "version": parts[2]},
                        scope,
                        receive,
                        send,
                    )
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
        try:
            with self.plane.admitted():  # counted from its arrival, for the batchers
                reply = await handler(self.plane, Call(params, headers, receive))
        except ClientGone:  # nobody to answer
            self.plane.metrics.http_request(route, "POST", 499)
            return
        except Mlaas4hepError as err:
            reply = reply_for(err)
        except Exception as err:  # a bug of ours: log it, answer 500, keep serving
            log.exception("internal error on POST %s", scope["path"], exc_info=err)
            reply = error_reply(500, f"internal server error: {type(err).__name__}")
        raw_headers = [
            (b"content-type", reply.content_type.encode()),
            (b"content-length", str(len(reply.body)).encode()),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": reply.body})
        self.plane.metrics.http_request(route, "POST", reply.status)
