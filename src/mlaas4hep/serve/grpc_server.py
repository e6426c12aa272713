"""The Open Inference Protocol v2 over gRPC: Triton's ``inference.GRPCInferenceService``.

HEP applications that call inference servers (CMSSW's SONIC, coffea's
``triton_wrapper`` with ``triton+grpc://host:port/model/version``) speak
Triton's gRPC service. This module serves it next to the HTTP API, in the same
asyncio event loop, over the same :class:`~mlaas4hep.serve.dataplane.DataPlane`:
the same repository, the same bearer token, the same dynamic batcher (a gRPC
request and an HTTP request for one model can share one onnxruntime call).

RPCs served (the others answer ``UNIMPLEMENTED``):

=========================  =================================================================
``ServerLive/Ready``       probes
``ServerMetadata``         name, version, extensions
``ModelMetadata``          every input tensor, the output FP32 ``[-1, K]`` (as over HTTP)
``ModelReady``             false when unloaded or unknown (as Triton)
``ModelConfig``            Triton's model configuration (:mod:`.tritonconfig`)
``ModelStatistics``        Triton's model statistics (:mod:`.statistics`); no name: every model
``ModelInfer``             tensors as typed ``contents`` or as ``raw_input_contents``
``RepositoryIndex``        every version and its state
``RepositoryModelLoad``    (token) load; parameter ``config``: JSON serving settings, ours or Triton's
``RepositoryModelUnload``  (token) unload
=========================  =================================================================

**Tensors.** An input comes either as ``contents`` (``fp32_contents`` for FP32,
``int_contents`` for INT8/16/32, ...) or as little-endian bytes in
``raw_input_contents`` (one entry per input, what ``tritonclient.grpc`` sends).
The reply mirrors the request: raw bytes in ``raw_output_contents`` when the
inputs came raw, typed ``contents`` when they came typed. A flat bundle takes
one FP32 ``[n, F]`` feature tensor; a bundle of object groups takes every
tensor its metadata lists (``jets`` FP32 ``[n, 10, 5]``, ``jets_mask`` BOOL
``[n, 10]`` as ``bool_contents`` or one byte per value, ...). **Raw
branches** are accepted as over HTTP, one tensor per branch the bundle's
preprocessing reads: a flat branch as ``[n]`` (or ``[n, 1]``), a jagged one as
a float ``[n, k]`` array padded with NaN after each event's values (a tensor
cannot be ragged; the NaNs mark the end of an event's list).

Each RPC decodes its message into the data plane's terms, calls it, and
encodes the answer: the checks of the token, the model and its inputs are the
data plane's, as over HTTP. This module only speaks gRPC, and maps the
server's domain errors to status codes once (:data:`GRPC_CODES`).

**Auth.** The token goes in the ``authorization`` metadata, ``Bearer <token>``,
as over HTTP: load and unload always need it, the rest only on a ``--private``
server. **Errors** become status codes: a malformed request
``INVALID_ARGUMENT``, an unknown model ``NOT_FOUND``, a missing or wrong token
``UNAUTHENTICATED``, a server without a token refusing changes
``PERMISSION_DENIED``, an unloaded or broken model ``UNAVAILABLE``, a bug of
ours ``INTERNAL`` (logged; the server goes on).

**Starting it.** :func:`with_grpc` wraps the ASGI app so that the gRPC server
starts and stops with the app's lifespan, in the loop of the ASGI server
(uvicorn), on ``host:port``, with TLS when given a certificate and key::

    app = with_grpc(create_app("models/"), port=8001, tls_cert="c.pem", tls_key="k.pem")
    uvicorn.run(app, port=8083, ssl_certfile="c.pem", ssl_keyfile="k.pem")
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from ..errors import Mlaas4hepError
from . import errors
from ._proto import grpc_service_pb2 as pb
from ._proto import grpc_service_pb2_grpc as pb_grpc
from ._proto import model_config_pb2 as mc
from .dataplane import DataPlane, InferRequest, InferResult
from .errors import InvalidRequest, ModelNotFound
from .lifespan import WithLifespan
from .listeners import check_free
from .tensors import DTYPES, MAX_DIMS

log = logging.getLogger("mlaas4hep.serve")
Code = grpc.StatusCode

#: The server's domain errors -> gRPC status codes; the nearest listed base class decides.
GRPC_CODES: dict[type[Exception], grpc.StatusCode] = {
    errors.InvalidRequest: Code.INVALID_ARGUMENT,
    errors.BundleInvalid: Code.INVALID_ARGUMENT,
    errors.Unauthenticated: Code.UNAUTHENTICATED,
    errors.Forbidden: Code.PERMISSION_DENIED,
    errors.ReadOnlyRepository: Code.FAILED_PRECONDITION,
    errors.ModelNotFound: Code.NOT_FOUND,
    errors.VersionConflict: Code.ALREADY_EXISTS,
    errors.TooLarge: Code.RESOURCE_EXHAUSTED,
    errors.Overloaded: Code.RESOURCE_EXHAUSTED,
    errors.Unavailable: Code.UNAVAILABLE,
    errors.ModelTimedOut: Code.DEADLINE_EXCEEDED,
    errors.TimedOut: Code.DEADLINE_EXCEEDED,
    errors.BodyTimedOut: Code.DEADLINE_EXCEEDED,
    errors.ClientGone: Code.CANCELLED,
    Mlaas4hepError: Code.INVALID_ARGUMENT,
}
#: Longest error message sent back: gRPC carries it in a header (trailing metadata), whose
#: size is limited (8 kB by default); a request naming a 10 kB model must still get its NOT_FOUND.
MAX_MESSAGE = 1024
#: datatype -> the typed ``InferTensorContents`` field that carries it (FP16 travels raw only).
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

Context = Any  # grpc.aio.ServicerContext (a generic class that mypy cannot take as an alias)


def error_code(err: BaseException) -> grpc.StatusCode:
    """The gRPC status of an error: :data:`GRPC_CODES`, ``INTERNAL`` for a bug."""
    for cls in type(err).__mro__:
        code = GRPC_CODES.get(cls)
        if code is not None:
            return code
    return Code.INTERNAL


def _message(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 20] + " ... (shortened)"


def _rpc(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn the exceptions of an RPC into gRPC status codes (never a crash, never a hang)."""

    @functools.wraps(fn)
    async def rpc(self: InferenceService, request: Any, context: Context) -> Any:
        try:
            return await fn(self, request, context)
        except Mlaas4hepError as err:
            code, msg = error_code(err), str(err) or type(err).__name__
        except RecursionError:  # a message nested deeper than a parser goes: the client's doing
            code, msg = Code.INVALID_ARGUMENT, "the request is nested too deeply"
        except Exception as err:  # a bug of ours: log it, tell the client, keep serving
            if isinstance(err, grpc.aio.AbortError):
                raise
            log.exception("internal error in gRPC %s", fn.__name__)
            code, msg = Code.INTERNAL, f"internal server error: {type(err).__name__}"
        await context.abort(code, _message(msg))

    return rpc


def _credentials(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


def _tensor_metadata(tensors: list[dict[str, Any]]) -> list[Any]:
    T = pb.ModelMetadataResponse.TensorMetadata
    return [T(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in tensors]


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The servicer: each RPC is decode -> :class:`DataPlane` -> encode."""

    def __init__(self, plane: DataPlane):
        self.plane = plane

    # ------------------------------------------------------------ health and metadata
    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=self.plane.live())

    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.plane.ready())

    @_rpc
    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return pb.ServerMetadataResponse(**self.plane.server_metadata())

    @_rpc
    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        meta = self.plane.model_metadata(request.name, request.version or None, _credentials(context))
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=_tensor_metadata(meta["inputs"]),
            outputs=_tensor_metadata(meta["outputs"]),
        )

    @_rpc
    async def ModelReady(self, request: Any, context: Context) -> Any:
        try:
            ready = self.plane.model_ready(request.name, request.version or None, _credentials(context))
        except (ModelNotFound, InvalidRequest):  # Triton: an unknown model is simply not ready
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @_rpc
    async def ModelConfig(self, request: Any, context: Context) -> Any:
        cfg = self.plane.model_config(request.name, request.version or None, _credentials(context))
        return pb.ModelConfigResponse(config=json_format.ParseDict(cfg, mc.ModelConfig()))

    @_rpc
    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        stats = self.plane.statistics(request.name or None, request.version or None, _credentials(context))
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    # ------------------------------------------------------------ inference
    @_rpc
    async def ModelInfer(self, request: Any, context: Context) -> Any:
        # reading the metadata costs a few µs per call: only when the server checks it
        credentials = _credentials(context) if self.plane.auth.private else None
        with self.plane.admitted():  # counted from its arrival, for the batchers
            # the wire front end took the raw tensors out of the message undecoded (.rawcontents)
            req, raw = decode_request(request, getattr(context, "raw", None))
            return encode_result(await self.plane.infer(req, credentials), raw)

    # ------------------------------------------------------------ repository extension
    @_rpc
    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        index = await self.plane.repository_index(_credentials(context), ready_only=request.ready)
        M = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                M(name=m["name"], version=m["version"], state=m["state"], reason=m["reason"]) for m in index
            ]
        )

    @_rpc
    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        credentials = _credentials(context)
        self.plane.check_admin(credentials)
        cfg = None
        if "config" in request.parameters:
            p = request.parameters["config"]
            text = p.string_param if p.WhichOneof("parameter_choice") == "string_param" else p.bytes_param
            try:
                cfg = json.loads(text)
            except (ValueError, UnicodeDecodeError) as err:
                raise InvalidRequest(f"parameter 'config' is not valid JSON: {err}") from None
            if not isinstance(cfg, dict):
                raise InvalidRequest("parameter 'config' must be a JSON object")
        await self.plane.load(request.model_name, cfg, credentials)
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        await self.plane.unload(request.model_name, _credentials(context))
        return pb.RepositoryModelUnloadResponse()


# ------------------------------------------------------------------ tensors
def decode_request(request: Any, blobs: list[memoryview] | None = None) -> tuple[InferRequest, bool]:
    """The data plane's request from a ``ModelInferRequest``, and whether its tensors came as raw bytes.

    ``blobs``: its ``raw_input_contents`` when they were taken out of the message before
    decoding (:mod:`.rawcontents`). Only the protocol is checked here (datatypes, sizes,
    duplicates); what the model takes is checked by the data plane, as over HTTP.
    """
    if not request.inputs:
        raise InvalidRequest("the request has no inputs")
    contents: Any = request.raw_input_contents if blobs is None else blobs
    raw = len(contents) > 0
    if raw and len(contents) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents holds {len(contents)} tensors for {len(request.inputs)} inputs",
        )
    tensors: dict[str, Any] = {}
    for i, t in enumerate(request.inputs):
        if t.name in tensors:
            raise InvalidRequest(f"input {t.name!r} appears twice")
        shape = _shape(t)
        tensors[t.name] = _raw_tensor(t, shape, contents[i]) if raw else _typed_tensor(t, shape)
    outputs = [o.name for o in request.outputs] or None
    return InferRequest(request.model_name, tensors, request.model_version or None, outputs, request.id), raw


def _shape(t: Any) -> list[int]:
    shape = [int(d) for d in t.shape]
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise InvalidRequest(f"input {t.name!r} has an invalid shape {shape}")
    return shape


def _raw_tensor(t: Any, shape: list[int], blob: bytes | memoryview) -> np.ndarray:
    dtype = DTYPES.get(t.datatype)
    if dtype is None:
        raise InvalidRequest(f"input {t.name!r}: unsupported datatype {t.datatype!r}")
    count = math.prod(shape)
    if len(blob) != count * dtype.itemsize:
        raise InvalidRequest(
            f"input {t.name!r}: {len(blob)} bytes for shape {shape} of {t.datatype} ({count * dtype.itemsize})",
        )
    return np.frombuffer(blob, dtype=dtype).reshape(shape)


def _typed_tensor(t: Any, shape: list[int]) -> np.ndarray:
    field = CONTENTS.get(t.datatype)
    if field is None:
        raise InvalidRequest(
            f"input {t.name!r}: datatype {t.datatype!r} has no typed contents; send raw_input_contents"
        )
    values = getattr(t.contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidRequest(f"input {t.name!r}: {len(values)} values in {field} for shape {shape}")
    return np.array(values, dtype=DTYPES[t.datatype]).reshape(shape)


def encode_result(result: InferResult, raw: bool) -> Any:
    """The reply: ``raw_output_contents`` when the inputs came raw, typed ``fp32_contents`` otherwise."""
    reply = pb.ModelInferResponse(
        model_name=result.model, model_version=str(result.version), id=result.id or ""
    )
    for name, y in result.outputs.items():
        y = np.ascontiguousarray(y, dtype=np.float32)
        out = reply.outputs.add(name=name, datatype="FP32", shape=list(y.shape))
        if raw:
            reply.raw_output_contents.append(y.tobytes())
        else:
            out.contents.fp32_contents.extend(y.ravel().tolist())
    return reply


# ------------------------------------------------------------------ server
#: ``grpc.aio`` servers (listeners) on the port, in one process; see :class:`GrpcServer`.
LISTENERS = 4
#: Who speaks gRPC without TLS: ``"wire"`` (:mod:`.grpcwire`, on the event loop) or ``"grpcio"``.
FRONTENDS = ("wire", "grpcio")
FRONTEND = "wire"


class GrpcServer:
    """``grpc.aio`` servers of :class:`InferenceService` on ``host:port`` (TLS with a cert and key).

    **Listeners.** A ``grpc.aio`` server accepts one call at a time: it asks
    grpc's core for the next call, waits for the answer to cross from grpc's
    poller thread to the event loop, starts the call's task, and only then asks
    for the next one. Under load that chain, not the work, set the pace, and
    the calls reached the dynamic batcher one by one (1-3 rows per onnxruntime
    call at 64 clients, against 15-60 over HTTP). So ``listeners`` servers
    (default :data:`LISTENERS`) share the port with ``SO_REUSEPORT``; the
    kernel spreads the clients' connections over them, and the loop receives
    several calls per wake-up. Before binding, the port is checked with a plain
    socket, so a port in use is still an error (unless ``reuse_port``: with
    ``--workers`` every worker process listens on it).

    **Front end.** ``frontend="wire"`` (the default without TLS) serves the
    calls with :class:`~mlaas4hep.serve.grpcwire.WireServer` instead: HTTP/2
    spoken on the event loop, one listener, a fraction of grpcio's CPU per
    call, the same servicer. With TLS, grpcio serves.
    """

    def __init__(
        self,
        plane: DataPlane,
        port: int,
        host: str = "127.0.0.1",
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        reuse_port: bool = False,
        listeners: int = LISTENERS,
        frontend: str = FRONTEND,
    ):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if frontend not in FRONTENDS:
            raise ValueError(f"gRPC front end {frontend!r}: expected one of {', '.join(FRONTENDS)}")
        self.plane, self.port, self.host = plane, int(port), host
        self.tls = (Path(tls_cert).read_bytes(), Path(tls_key).read_bytes()) if tls_cert and tls_key else None
        self.reuse_port = reuse_port
        self.listeners = max(1, int(listeners))
        self.servers: list[grpc.aio.Server] = []
        self.wire: Any = None  # the grpcwire.WireServer when it serves
        self.frontend = "grpcio" if self.tls is not None else frontend

    @property
    def server(self) -> grpc.aio.Server | None:
        """The first listener (``None`` when stopped)."""
        return self.servers[0] if self.servers else None

    def _check_free(self) -> None:
        """A port in use is an error, even though the listeners bind it with ``SO_REUSEPORT``."""
        try:
            check_free(self.host, self.port)
        except socket.gaierror:
            return  # a name grpc resolves itself (e.g. several addresses): let grpc report problems
        except OSError as err:
            raise RuntimeError(f"gRPC cannot listen on {self.host}:{self.port}: {err.strerror}") from None

    def _add(self, address: str, options: list[tuple[str, Any]]) -> grpc.aio.Server:
        server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, server)
        try:
            if self.tls is not None:
                creds = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
                bound = server.add_secure_port(address, creds)
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as err:
            raise RuntimeError(f"gRPC cannot listen on {address}: {err}") from None
        if not bound:
            raise RuntimeError(f"gRPC cannot listen on {address}")
        self.port = bound
        return server

    async def start(self) -> None:
        shared = self.reuse_port or self.listeners > 1
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", int(self.plane.config.max_body)),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1 if shared else 0),
        ]
        if shared and not self.reuse_port and self.port != 0:
            self._check_free()
        self.service = InferenceService(self.plane)
        if self.frontend == "wire":
            return await self._start_wire()
        try:
            for _ in range(self.listeners):
                # the first one picks the port when asked for port 0; the others join it
                server = self._add(f"{self.host}:{self.port}", options)
                await server.start()
                self.servers.append(server)
        except BaseException:
            await self.stop(0)
            raise
        log.info(
            "gRPC listening on %s:%d%s (%d listeners)",
            self.host,
            self.port,
            " (TLS)" if self.tls else "",
            len(self.servers),
        )

    async def _start_wire(self) -> None:
        try:
            from .grpcwire import WireServer
            from .h2limits import Limits
        except ImportError as err:  # hpack: in the serve extra
            raise RuntimeError(
                f"the wire gRPC front end needs {err.name}: pip install 'mlaas4hep[serve]' "
                "(or serve gRPC with --grpc-frontend grpcio)"
            ) from None

        plane = self.plane
        wire = WireServer(
            self.service,
            plane.config.max_body,
            Limits(body_timeout=plane.config.body_timeout),
            plane.intake,
            functools.partial(plane.metrics.body_timeout, "grpc"),
        )
        try:
            self.port = await wire.start(self.host, self.port, self.reuse_port)
        except OSError as err:
            raise RuntimeError(f"gRPC cannot listen on {self.host}:{self.port}: {err.strerror}") from None
        self.wire = wire
        log.info("gRPC listening on %s:%d (wire front end)", self.host, self.port)

    async def stop(self, grace: float = 1.0) -> None:
        wire, self.wire = self.wire, None
        if wire is not None:
            await wire.stop(grace)
        servers, self.servers = self.servers, []
        if servers:
            await asyncio.gather(*(s.stop(grace) for s in servers))


class WithGrpc(WithLifespan):
    """ASGI wrapper: runs a :class:`GrpcServer` for the wrapped app's lifespan, in the same event loop."""

    def __init__(self, app: Any, grpc_server: GrpcServer):
        super().__init__(app)
        self.grpc = grpc_server

    async def startup(self) -> None:
        await self.grpc.start()  # a failure here fails the startup (uvicorn exits)

    async def shutdown(self) -> None:
        await self.grpc.stop()


def with_grpc(
    app: Any,
    port: int,
    host: str = "127.0.0.1",
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    reuse_port: bool = False,
    listeners: int | None = None,
    frontend: str | None = None,
) -> WithGrpc:
    """``app`` (from :func:`~mlaas4hep.serve.create_app`) serving gRPC on ``host:port`` too.

    ``listeners``, ``frontend``: see :class:`GrpcServer`; defaults ``$MLAAS4HEP_GRPC_LISTENERS``
    or :data:`LISTENERS`, ``$MLAAS4HEP_GRPC_FRONTEND`` or :data:`FRONTEND`.
    """
    if listeners is None:
        listeners = int(os.environ.get("MLAAS4HEP_GRPC_LISTENERS") or LISTENERS)
    if frontend is None:
        frontend = os.environ.get("MLAAS4HEP_GRPC_FRONTEND") or FRONTEND
    server = GrpcServer(app.plane, port, host, tls_cert, tls_key, reuse_port, listeners, frontend)
    return WithGrpc(app, server)
