"""One unary gRPC call of the wire front end (:mod:`.grpcwire`): a request's bytes in, a status and a reply out.

:func:`unary` does what grpcio does between the HTTP/2 stream and the
servicer: it checks the 5-byte message prefix, inflates a compressed
message (gzip or deflate) within the message limit, decodes the protobuf,
awaits the servicer's coroutine (within the call's ``grpc-timeout``), and
turns an ``abort`` into the call's status. :class:`Context` is what the
servicer uses of ``grpc.aio.ServicerContext``; :class:`Methods` maps a
``:path`` to the servicer's coroutine.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from ._proto import grpc_service_pb2 as pb
from .h2limits import parse_timeout
from .rawcontents import split_raw

SERVICE = "/inference.GRPCInferenceService/"


class Context:
    """What the servicer uses of ``grpc.aio.ServicerContext``: the metadata and ``abort``.

    ``abort`` raises grpcio's own ``AbortError`` (the servicer lets it through) and keeps
    the status here for the reply.
    """

    __slots__ = ("_headers", "code", "details", "raw")

    def __init__(self, headers: list[tuple[str, str]], raw: list[memoryview] | None = None):
        self._headers = headers
        self.code, self.details = grpc.StatusCode.UNKNOWN, ""
        self.raw = raw  # a ModelInferRequest's raw_input_contents, taken out before decoding (.rawcontents)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in self._headers if not k.startswith(":"))

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError(details)


class Methods:
    """``:path`` -> (request message class, the servicer's coroutine) for the service's unary RPCs."""

    def __init__(self, service: Any):
        self.table: dict[str, tuple[Any, Callable[..., Any]]] = {}
        desc = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        base = type(service).__mro__
        for m in desc.methods:
            if m.client_streaming or m.server_streaming:
                continue
            # only what the servicer itself overrides: the generated base answers UNIMPLEMENTED
            owner = next((c for c in base if m.name in c.__dict__), None)
            if owner is None or owner.__module__.endswith("_pb2_grpc"):
                continue
            self.table[SERVICE + m.name] = (getattr(pb, m.input_type.name), getattr(service, m.name))


async def unary(
    methods: Methods,
    headers: list[tuple[str, str]],
    body: bytes | memoryview,
    max_message: int,
    hold: Callable[[int], bool] | None = None,
) -> tuple[int, str, bytes]:
    """(gRPC status code, message, serialised reply) of the call ``headers`` + ``body`` (prefix included).

    ``hold(n)``: may the call keep a decompressed message of ``n`` bytes while it runs (a few
    bytes of gzip can become the whole message limit, so the connection counts them too)?
    """
    path = timeout = ""
    for k, v in headers:
        if k == ":path":
            path = v
        elif k == "grpc-timeout":
            timeout = v
    method = methods.table.get(path)
    if method is None:
        return grpc.StatusCode.UNIMPLEMENTED.value[0], f"Method not found: {path}", b""
    if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        return grpc.StatusCode.INTERNAL.value[0], "the request is not one gRPC message", b""
    cls, fn = method
    data: bytes | memoryview = memoryview(body)[5:]
    if body[0]:
        data, code, message = _inflate(headers, data, max_message)
        if code:
            return code, message, b""
        if hold is not None and not hold(len(data)):
            msg = (
                f"the connection's calls in flight hold too many bytes to decompress {len(data)} more; retry"
            )
            return grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], msg, b""
    body = b""  # a compressed message's frame is done with: freed (mypyc cannot del an argument)
    raw: list[memoryview] | None = None
    if cls is pb.ModelInferRequest:
        split = split_raw(memoryview(data))
        if split is not None:
            data, raw = split
    try:
        request = cls.FromString(data)
    except (
        DecodeError,
        RecursionError,
    ):  # grpcio answers UNKNOWN here (and logs an error): the client's doing
        return (
            grpc.StatusCode.INVALID_ARGUMENT.value[0],
            f"the request is not a valid {cls.DESCRIPTOR.full_name}",
            b"",
        )
    del data
    ctx = Context(headers, raw)
    seconds = parse_timeout(timeout) if timeout else None
    try:
        out = await (fn(request, ctx) if seconds is None else _within(seconds, fn(request, ctx)))
    except grpc.aio.AbortError:
        return ctx.code.value[0], ctx.details, b""
    except TimeoutError:
        return grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded", b""
    return 0, "", out.SerializeToString()


def _inflate(
    headers: list[tuple[str, str]], data: bytes | memoryview, max_message: int
) -> tuple[bytes, int, str]:
    """A compressed message's bytes (gzip or deflate, as ``grpc-encoding`` says), within the limit."""
    enc = next((v for k, v in headers if k == "grpc-encoding"), "identity")
    if enc not in ("gzip", "deflate"):
        return b"", grpc.StatusCode.UNIMPLEMENTED.value[0], f"grpc-encoding {enc!r} is not served"
    z = zlib.decompressobj(zlib.MAX_WBITS | 16 if enc == "gzip" else zlib.MAX_WBITS)
    try:
        out = z.decompress(data, max_message + 1)
    except zlib.error as err:
        return b"", grpc.StatusCode.INTERNAL.value[0], f"cannot decompress the message: {err}"
    if len(out) > max_message:
        msg = f"Received message larger than max (more than {max_message} bytes decompressed)"
        return b"", grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], msg
    return out, 0, ""


async def _within(seconds: float, work: Coroutine[Any, Any, Any]) -> Any:
    """``await work``, or :class:`TimeoutError` after ``seconds`` (``asyncio.timeout`` is 3.11+)."""
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def expire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(seconds, expire)
    try:
        return await work
    except asyncio.CancelledError:
        if not fired:
            raise  # cancelled by the client (RST_STREAM) or the server's stop
        raise TimeoutError from None
    finally:
        handle.cancel()
