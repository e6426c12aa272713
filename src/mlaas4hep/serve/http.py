"""What the HTTP routes share: the state of a request, bodies with limits, JSON and OIP replies.

The route modules (:mod:`.tfaas`, :mod:`.v2`, :mod:`.rootpredict`) import this
and :mod:`.state`, never :mod:`.app` (which imports them to assemble the app),
nor each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from . import tensors
from .errors import ApiError
from .fastpath import Reply, decompress
from .state import ServerState
from .tensors import InferRequest

_JSON = "application/json"


def state_of(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past ``limit`` bytes (also once decompressed)."""
    cl = request.headers.get("content-length")
    if cl is not None:
        try:
            n = int(cl)
        except ValueError:
            raise ApiError(400, "invalid Content-Length") from None
        if n > limit:
            raise ApiError(413, f"the request body of {n} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        if chunk:
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    enc = request.headers.get("content-encoding")
    if enc and enc != "identity":
        body = decompress(body, enc.strip().lower(), limit)
    return body


async def served_by_fastpath(request: Request) -> Response:
    """Placeholder endpoint of the routes :class:`~mlaas4hep.serve.fastpath.FastPath` serves.

    It keeps them in the router so that another method on them gets 405.
    """
    raise ApiError(500, "this route is served by the fast path")


def json_response(obj: Any, status: int = 200) -> Response:
    body, _ = tensors.encode_response(obj, [])
    return Response(body, status_code=status, media_type=_JSON)


def infer_reply(name: str, version: int, req: InferRequest, results: dict[str, np.ndarray]) -> Reply:
    """The OIP reply to an infer request for model ``name``/``version``: requested outputs, JSON or binary."""
    names = list(results) if req.outputs is None else req.outputs
    header: dict[str, Any] = {"model_name": name, "model_version": str(version)}
    if req.id is not None:
        header["id"] = req.id
    outs, blobs = [], []
    for out in names:
        if out not in results:
            raise ApiError(400, f"unknown output {out!r}; model {name!r} has {list(results)}")
        t, raw = tensors.output_tensor(out, results[out], req.wants_binary(out))
        outs.append(t)
        if raw is not None:
            blobs.append(raw)
    header["outputs"] = outs
    body, hlen = tensors.encode_response(header, blobs)
    if hlen is None:
        return Reply(body)
    return Reply(body, "application/octet-stream", {"Inference-Header-Content-Length": str(hlen)})
