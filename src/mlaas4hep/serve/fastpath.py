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
mapped exactly as in the Starlette app (``{"error": ...}`` with a 4xx, 500 for
a bug). Every other route, and any other method on these paths, goes to
Starlette.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.responses import Response

from ..errors import Mlaas4hepError
from .errors import ApiError, http_status

log = logging.getLogger("mlaas4hep.serve")
_JSON = b"application/json"


class Reply:
    """A response body with its content type and extra headers."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        status: int = 200,
    ):
        self.body, self.content_type, self.headers, self.status = body, content_type, headers or {}, status

    def response(self) -> Response:
        return Response(
            self.body, status_code=self.status, media_type=self.content_type, headers=self.headers
        )


class Call:
    """One request as the hot handlers see it: path parameters, headers and a body to read."""

    __slots__ = ("_receive", "headers", "params")

    def __init__(
        self,
        params: dict[str, str],
        headers: Mapping[str, str],
        receive: Callable[[], Awaitable[dict[str, Any]]],
    ):
        self.params, self.headers, self._receive = params, headers, receive

    async def read_body(self, limit: int) -> bytes | bytearray:
        """The whole body; 413 past ``limit`` bytes (checked on Content-Length first, then while reading)."""
        cl = self.headers.get("content-length")
        if cl is not None:
            if not cl.isdigit():
                raise ApiError(400, "invalid Content-Length")
            if int(cl) > limit:
                raise ApiError(413, f"the request body of {cl} bytes exceeds the limit of {limit} bytes")
        # A large body of announced length is gathered into one preallocated buffer
        # (one copy; numpy then views it), a small or chunked one as a list of parts.
        buf = bytearray(int(cl)) if cl is not None and int(cl) > 65536 else None
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await self._receive()
            if msg["type"] == "http.disconnect":
                raise ApiError(499, "the client went away")
            chunk = msg.get("body", b"")
            if chunk:
                end = size + len(chunk)
                if end > limit:
                    raise ApiError(413, f"the request body exceeds the limit of {limit} bytes")
                if buf is not None and end <= len(buf):
                    buf[size:end] = chunk
                else:
                    if buf is not None:  # more than announced: fall back to parts
                        chunks, buf = [bytes(buf[:size])], None
                    chunks.append(chunk)
                size = end
            if not msg.get("more_body", False):
                break
        if buf is not None:
            body: bytes | bytearray = buf if size == len(buf) else buf[:size]
        else:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        enc = self.headers.get("content-encoding")
        if enc and enc != "identity":
            body = decompress(body, enc.strip().lower(), limit)
        return body


def decompress(body: bytes | bytearray, enc: str, limit: int) -> bytes:
    """gzip/deflate request bodies (tritonclient can send them), bounded by ``limit``."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(enc)
    if wbits is None:
        raise ApiError(415, f"unsupported Content-Encoding {enc!r} (use gzip or deflate)")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as err:
        raise ApiError(400, f"the {enc} body is corrupt: {err}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise ApiError(413, f"the decompressed body exceeds the limit of {limit} bytes")
    return out


Handler = Callable[[Any, Call], Awaitable[Reply]]


class FastPath:
    """ASGI wrapper serving the inference routes itself and passing everything else to ``app``."""

    def __init__(self, app: Any, state: Any, infer: Handler, tfaas_json: Handler):
        self.app, self.state = app, state
        self._infer, self._json = infer, tfaas_json

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
        self.state.in_flight += 1
        try:
            reply = await handler(self.state, Call(params, headers, receive))
        except ApiError as err:
            if err.status == 499:  # nobody to answer
                self.state.metrics.http_request(route, "POST", 499)
                return
            reply = _error(err.status, err.message, err.headers)
        except Mlaas4hepError as err:
            reply = _error(http_status(err), str(err) or type(err).__name__)
        except Exception as err:  # a bug of ours: log it, answer 500, keep serving
            log.exception("internal error on POST %s", scope["path"], exc_info=err)
            reply = _error(500, f"internal server error: {type(err).__name__}")
        finally:
            self.state.in_flight -= 1
        raw_headers = [
            (b"content-type", reply.content_type.encode()),
            (b"content-length", str(len(reply.body)).encode()),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        await send({"type": "http.response.start", "status": reply.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": reply.body})
        self.state.metrics.http_request(route, "POST", reply.status)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(orjson.dumps({"error": message}), "application/json", headers, status)
