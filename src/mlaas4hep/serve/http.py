"""What the HTTP front ends share: requests and replies, bodies with limits, and the one error table.

The HTTP adapters (:mod:`.v2`, :mod:`.tfaas`, :mod:`.rootpredict`, the fast
path :mod:`.fastpath` and the protocol :mod:`.httpfront`, the app :mod:`.app`)
import this; it imports none of them. A request reaches a handler as a :class:`Call` (path parameters, headers,
a body to read with a limit), whether it came through Starlette or straight
from ASGI, and leaves as a :class:`Reply`.

:data:`HTTP_STATUS` maps the server's domain errors (:mod:`.errors`) to HTTP
statuses, once for every HTTP route; :func:`error_reply` makes the
``{"error": "..."}`` answer, with ``Retry-After`` and ``WWW-Authenticate``
where the error says so.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response

from ..errors import Mlaas4hepError
from . import errors, tensors
from .dataplane import DataPlane, InferResult
from .tensors import OutputPrefs

#: Domain error -> HTTP status; the nearest listed base class decides (another Mlaas4hepError: 400).
HTTP_STATUS: dict[type[Exception], int] = {
    errors.InvalidRequest: 400,
    errors.Unsupported: 415,
    errors.BundleInvalid: 400,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.ModelNotFound: 404,
    errors.JobNotFound: 404,
    errors.VersionConflict: 409,
    errors.TooLarge: 413,
    errors.Overloaded: 429,
    errors.ModelUnloaded: 400,
    errors.ModelUnhealthy: 400,
    errors.Unavailable: 503,
    errors.TimedOut: 503,
    errors.BodyTimedOut: 408,
    errors.ClientGone: 499,
    Mlaas4hepError: 400,
}


def http_status(err: BaseException | None) -> int:
    """The HTTP status of an outcome: 200 for none, the table's for an error, 500 for a bug."""
    if err is None:
        return 200
    for cls in type(err).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 500


def error_headers(err: BaseException) -> dict[str, str]:
    headers = {}
    retry = getattr(err, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(max(1, round(retry)))
    if isinstance(err, errors.Unauthenticated):
        headers["WWW-Authenticate"] = err.challenge
    return headers


class Reply:
    """A response body with its content type, extra headers and status."""

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


def error_reply(status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    """``{"error": message}`` as ``application/json``."""
    return Reply(orjson.dumps({"error": message}), "application/json", dict(headers or {}), status)


def reply_for(err: Exception) -> Reply:
    """The answer to a domain or library error (not to a bug: see :mod:`.app`)."""
    return error_reply(http_status(err), str(err) or type(err).__name__, error_headers(err))


def json_reply(obj: Any, status: int = 200) -> Reply:
    body, _ = tensors.encode_response(obj, [])
    return Reply(body, status=status)


def json_response(obj: Any, status: int = 200) -> Response:
    return json_reply(obj, status).response()


class Call:
    """One request as the handlers see it: path parameters, query, headers and a body to read."""

    __slots__ = ("_receive", "headers", "params", "query")

    def __init__(
        self,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        receive: Callable[[], Awaitable[Any]],
        query: Mapping[str, str] | None = None,
    ):
        self.params, self.headers, self._receive = params, headers, receive
        self.query = query or {}

    @classmethod
    def of(cls, request: Request) -> Call:
        """A Starlette request as a :class:`Call`."""
        return cls(request.path_params, request.headers, request.receive, request.query_params)

    @property
    def credentials(self) -> str | None:
        """The ``Authorization`` header, which the data plane checks."""
        return self.headers.get("authorization")

    async def read_body(self, limit: int) -> bytes | bytearray:
        """The whole body; :class:`TooLarge` past ``limit`` bytes (on Content-Length first, then while reading)."""
        cl = check_length(self.headers, limit)
        # A large body of announced length is gathered into one preallocated buffer
        # (one copy; numpy then views it), a small or chunked one as a list of parts.
        buf = bytearray(int(cl)) if cl is not None and int(cl) > 65536 else None
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await self._receive()
            if msg["type"] == "http.disconnect":
                raise errors.ClientGone("the client went away")
            chunk = msg.get("body", b"")
            if chunk:
                end = size + len(chunk)
                if end > limit:
                    raise errors.TooLarge(f"the request body exceeds the limit of {limit} bytes")
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
        return decoded(body, self.headers, limit)


def decoded(body: bytes | bytearray, headers: Mapping[str, str], limit: int) -> bytes | bytearray:
    """``body`` as sent before its ``Content-Encoding`` (gzip, deflate; at most ``limit`` bytes)."""
    enc = headers.get("content-encoding")
    if enc and enc != "identity":
        return decompress(body, enc.strip().lower(), limit)
    return body


def check_length(headers: Mapping[str, str], limit: int) -> str | None:
    """The ``Content-Length`` header, checked: a number, at most ``limit`` (else the client's error)."""
    cl = headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise errors.InvalidRequest("invalid Content-Length")
        if int(cl) > limit:
            raise errors.TooLarge(f"the request body of {cl} bytes exceeds the limit of {limit} bytes")
    return cl


def decompress(body: bytes | bytearray, enc: str, limit: int) -> bytes:
    """gzip/deflate request bodies (tritonclient can send them), bounded by ``limit``."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(enc)
    if wbits is None:
        raise errors.Unsupported(f"unsupported Content-Encoding {enc!r} (use gzip or deflate)")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as err:
        raise errors.InvalidRequest(f"the {enc} body is corrupt: {err}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise errors.TooLarge(f"the decompressed body exceeds the limit of {limit} bytes")
    return out


def plane_of(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


#: A handler: the data plane and one call in, a reply out.
Handler = Callable[[DataPlane, Call], Awaitable[Reply]]


def infer_reply(result: InferResult, prefs: OutputPrefs) -> Reply:
    """The OIP reply to an infer request: the outputs asked for, JSON or binary."""
    return tensors_reply(result.model, result.version, result.id, result.outputs, prefs)


#: JSON headers of all-binary replies by (model, version, outputs' names, dtypes, shapes); see :func:`tensors_reply`.
_binary_heads: dict[tuple[Any, ...], bytes] = {}


def tensors_reply(
    name: str, version: int, rid: str | None, results: Mapping[str, np.ndarray], prefs: OutputPrefs
) -> Reply:
    """An OIP reply holding ``results`` (every one of them unless ``prefs`` names some).

    A reply whose outputs all go binary, without a request id, has the same
    JSON header for every reply of one shape: it is encoded once.
    """
    names = prefs.outputs if prefs.outputs is not None else list(results)
    if rid is None and all(prefs.wants_binary(out) for out in names):
        arrays = [results[out] for out in names]
        if all(a.flags.c_contiguous and a.dtype.byteorder != ">" for a in arrays):
            key = (name, version, *[(out, a.dtype.str, a.shape) for out, a in zip(names, arrays)])
            js = _binary_heads.get(key)
            if js is None:
                header = _header(name, version, rid)
                header["outputs"] = [tensors.output_tensor(out, results[out], True)[0] for out in names]
                js, _ = tensors.encode_response(header, [])
                if len(_binary_heads) >= 256:
                    _binary_heads.clear()
                _binary_heads[key] = js
            body = b"".join([js, *[a.tobytes() for a in arrays]])
            return Reply(body, "application/octet-stream", {"Inference-Header-Content-Length": str(len(js))})
    outs, blobs = [], []
    for out in names:
        t, raw = tensors.output_tensor(out, results[out], prefs.wants_binary(out))
        outs.append(t)
        if raw is not None:
            blobs.append(raw)
    header = _header(name, version, rid)
    header["outputs"] = outs
    body, hlen = tensors.encode_response(header, blobs)
    if hlen is None:
        return Reply(body)
    return Reply(body, "application/octet-stream", {"Inference-Header-Content-Length": str(hlen)})


def _header(name: str, version: int, rid: str | None) -> dict[str, Any]:
    header: dict[str, Any] = {"model_name": name, "model_version": str(version)}
    if rid is not None:
        header["id"] = rid
    return header
