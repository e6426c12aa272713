"""The ASGI application: state shared by the routes, body limits, errors, the web page.

:func:`create_app` builds a Starlette app (FastAPI's core, without the
per-request validation layer, which costs more than our whole hot path) that
serves three APIs over one :class:`~mlaas4hep.serve.repository.Repository`:

* the TFaaS API (:mod:`~mlaas4hep.serve.tfaas`): ``/upload``, ``/models``,
  ``/delete/{model}``, ``/json``, ``/status``;
* the Open Inference Protocol v2 (:mod:`~mlaas4hep.serve.v2`) with the binary
  tensor and repository extensions, plus ``predict_root``;
* ``/`` (a web page), ``/metrics`` (Prometheus).

Every error reaches the client as ``{"error": "..."}``: :class:`ApiError` with
its status, :class:`~mlaas4hep.io.Mlaas4hepError` (bad raw inputs, unreadable
ROOT file, ...) as 400, an unknown route as 404, anything else as 500 (a bug:
logged, and the server goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..errors import Mlaas4hepError
from ..io.preprocess import Preprocessor
from .auth import Auth, load_token
from .batching import Batcher
from .errors import ApiError, error_response
from .fastpath import FastPath, decompress
from .lanes import Lane
from .metrics import Metrics
from .repository import Repository

log = logging.getLogger("mlaas4hep.serve")
T = TypeVar("T")

MAX_BODY = 64 * 1024 * 1024  # inference requests
MAX_UPLOAD = 512 * 1024 * 1024  # bundle uploads
MAX_CELLS = 2**25  # events x features one request may make the server allocate (128 MiB of float32)
PRE_TIMEOUT = 30.0  # seconds of preprocessing per request
ROOT_TIMEOUT = 300.0  # seconds per predict_root request


@dataclass
class ModelInfo:
    """What the hot path needs to know about one model version, computed once."""

    name: str
    version: int
    meta: dict[str, Any]
    input_name: str
    output_name: str
    features: list[str]
    labels: list[str]
    n_outputs: int
    preprocessor: Preprocessor | None
    raw_inputs: list[str]
    _orders: dict[tuple[str, ...], np.ndarray | None] = field(default_factory=dict)

    @classmethod
    def from_meta(cls, name: str, version: int, meta: dict[str, Any]) -> ModelInfo:
        pre_d = meta["inputs"].get("preprocessing")
        try:
            pre = Preprocessor.from_dict(pre_d) if pre_d else None
        except Mlaas4hepError as err:
            raise ApiError(503, f"model {name!r} has an invalid preprocessing description: {err}") from None
        labels = list(meta["outputs"]["labels"])
        shape = meta["outputs"].get("shape") or [-1, 1 if len(labels) <= 2 else len(labels)]
        return cls(
            name=name,
            version=version,
            meta=meta,
            input_name=str(meta["inputs"].get("onnx_input") or "input"),
            output_name=str(meta["outputs"].get("onnx_output") or "output"),
            features=list(meta["inputs"]["features"]),
            labels=labels,
            n_outputs=int(shape[-1]) if isinstance(shape[-1], int) and shape[-1] > 0 else 1,
            preprocessor=pre,
            raw_inputs=list(pre.inputs) if pre is not None else [],
        )

    def column_order(self, keys: list[str]) -> np.ndarray | None:
        """Column permutation taking ``keys`` order to the model's feature order (None: same order)."""
        key = tuple(keys)
        if key in self._orders:
            return self._orders[key]
        if sorted(keys) != sorted(self.features) or len(set(keys)) != len(keys):
            missing = [f for f in self.features if f not in keys]
            extra = [k for k in keys if k not in self.features]
            raise ApiError(
                400,
                f"keys do not match the features of model {self.name!r}: "
                f"missing {missing[:10]}, unknown {extra[:10]}",
            )
        pos = {k: i for i, k in enumerate(keys)}
        order = None if list(keys) == self.features else np.array([pos[f] for f in self.features])
        if len(self._orders) < 64:
            self._orders[key] = order
        return order


class ServerState:
    """Everything the routes share: repository, auth, metrics, batchers and thread pools."""

    def __init__(
        self,
        repo: Repository,
        auth: Auth,
        max_batch: int = 256,
        max_delay_ms: float = 2.0,
        max_body: int = MAX_BODY,
        max_upload: int = MAX_UPLOAD,
        infer_threads: int = 2,
        root_prefixes: tuple[str, ...] = ("root://", "http://", "https://"),
        allow_remote: tuple[str, ...] = (),
        max_cells: int = MAX_CELLS,
        pre_timeout: float = PRE_TIMEOUT,
        root_timeout: float = ROOT_TIMEOUT,
        root_threads: int = 2,
    ):
        self.repo, self.auth = repo, auth
        self.max_batch, self.max_delay_ms = max_batch, max_delay_ms
        self.max_body, self.max_upload = max_body, max_upload
        self.root_prefixes = root_prefixes
        self.allow_remote = tuple(h.lower() for h in allow_remote)
        self.max_cells = max_cells
        self.root_timeout = root_timeout
        self.metrics = Metrics()
        self.started = time.time()
        self.in_flight = 0  # inference requests being handled (kept by the fast path)
        self.infer_pool = ThreadPoolExecutor(max(1, infer_threads), thread_name_prefix="mlaas4hep-infer")
        self.io_pool = ThreadPoolExecutor(4, thread_name_prefix="mlaas4hep-io")  # repository, uploads
        # request work that may be slow gets lanes of its own (see .lanes): preprocessing of raw
        # inputs, and predict_root, whose remote reads may hang until the io layer's timeouts
        self.pre_lane = Lane(
            "preprocessing",
            max(1, infer_threads),
            64,
            pre_timeout,
            lambda t: ApiError(
                503,
                f"preprocessing the request took longer than {t:g} s: send fewer events",
                {"Retry-After": "1"},
            ),
        )
        self.root_lane = Lane(
            "predict_root",
            root_threads,
            2 * root_threads,
            root_timeout,
            lambda t: ApiError(400, f"cannot score the file: no result within {t:g} s"),
        )
        self._batchers: dict[tuple[str, int], Batcher] = {}
        self._infos: dict[tuple[str, int], ModelInfo] = {}
        self._stamps: dict[tuple[str, int], int] = {}
        self._generation = repo.generation

    def model(self, name: str, version: Any = None) -> ModelInfo:
        """Resolve ``name``/``version`` (404 if unknown) to its cached :class:`ModelInfo`."""
        key = self.repo.resolve(name, version)
        if self.repo.generation != self._generation:
            self._prune()
        info = self._infos.get(key)
        if info is None:
            info = self._infos[key] = ModelInfo.from_meta(key[0], key[1], self.repo.meta(*key))
            self._stamps[key] = self.repo.stamp(*key)
        return info

    def _prune(self) -> None:
        """Forget infos and batchers of versions that were deleted or replaced (maybe by another process)."""
        self._generation = self.repo.generation
        for key in [k for k, st in self._stamps.items() if self.repo.stamp(*k) != st]:
            self._infos.pop(key, None)
            self._stamps.pop(key, None)
        # batchers are rebuilt with the current settings; old ones finish their queue, then stop
        for b in self._batchers.values():
            b.retire()
        self._batchers.clear()

    def batcher(self, info: ModelInfo) -> Batcher:
        key = (info.name, info.version)
        b = self._batchers.get(key)
        if b is None:
            cfg = self.repo.serving(*key)
            repo = self.repo

            def predict(x: np.ndarray, _key: tuple[str, int] = key) -> np.ndarray:
                return repo.predictor(*_key).predict(x)

            b = self._batchers[key] = Batcher(
                predict,
                max_batch=cfg.get("max_batch", self.max_batch),
                max_delay_ms=cfg.get("max_delay_ms", self.max_delay_ms),
                executor=self.infer_pool,
                observe=self.metrics.batch_observer(info.name),
                in_flight=lambda: self.in_flight,
            )
        return b

    async def infer(self, info: ModelInfo, x: np.ndarray) -> np.ndarray:
        """Scores for feature rows ``x`` through the model's dynamic batcher."""
        if not self.repo.is_ready(info.name):
            raise ApiError(
                400, f"model {info.name!r} is unloaded: POST /v2/repository/models/{info.name}/load first"
            )
        return await self.batcher(info).infer(x)

    def forget(self, name: str) -> None:
        """Rebuild batchers and infos on next use (after delete, unload or new settings)."""
        self._prune()
        self.metrics.loaded.set(len(self.repo.loaded()))

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call (disk, network, model loading) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, fn, *args)

    async def preprocess(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a request's preprocessing in its lane: off the event loop, with a time limit."""
        return await self.pre_lane.run(fn, *args)

    def check_cells(self, events: int, features: int) -> None:
        """413 when ``events x features`` exceeds what one request may make the server allocate."""
        if events * features > self.max_cells:
            raise ApiError(
                413,
                f"{events} events x {features} features exceed this server's limit of "
                f"{self.max_cells} values per request: send fewer events per request",
            )

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()
        self.pre_lane.close()
        self.root_lane.close()
        self.infer_pool.shutdown(wait=False, cancel_futures=True)
        self.io_pool.shutdown(wait=False, cancel_futures=True)


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


# ----------------------------------------------------------------- errors
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _library_error(request: Request, exc: Exception) -> Response:
    return error_response(400, str(exc) or type(exc).__name__)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    msg = {
        404: f"no route {request.url.path!r}",
        405: f"method {request.method} not allowed on {request.url.path!r}",
    }
    return error_response(exc.status_code, msg.get(exc.status_code, str(exc.detail)), exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal server error: {type(exc).__name__}")


class Instrument:
    """ASGI middleware counting every HTTP request by route template, method and status."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.http_request(getattr(route, "path", "unmatched"), scope["method"], status)


# ----------------------------------------------------------------- misc routes
def _page() -> str:
    return resources.files("mlaas4hep.serve").joinpath("static/index.html").read_text()


async def index_page(request: Request) -> Response:
    return HTMLResponse(request.app.state.page)


async def openapi_route(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


async def metrics_route(request: Request) -> Response:
    st = state_of(request)
    st.auth.require_read(request)
    st.metrics.loaded.set(len(st.repo.loaded()))
    data, ctype = st.metrics.exposition()
    return Response(data, media_type=ctype)


def create_app(
    repo_dir: str | os.PathLike[str],
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    max_batch: int = 256,
    max_delay_ms: float = 2.0,
    max_loaded: int = 16,
    threads: int | None = None,
    infer_threads: int = 2,
    private: bool = False,
    allow_anonymous_admin: bool = False,
    max_body: int = MAX_BODY,
    max_upload: int = MAX_UPLOAD,
    root_prefixes: tuple[str, ...] | list[str] = ("root://", "http://", "https://"),
    allow_remote: tuple[str, ...] | list[str] = (),
    max_cells: int = MAX_CELLS,
    pre_timeout: float = PRE_TIMEOUT,
    root_timeout: float = ROOT_TIMEOUT,
    shared: bool = False,
) -> FastPath:
    """Build the server app (an ASGI callable) over the repository in ``repo_dir``.

    The result is a :class:`~mlaas4hep.serve.fastpath.FastPath` in front of a
    Starlette app (``.app``); ``.state`` is the :class:`ServerState`.

    ``token`` (or ``token_file``, or ``$MLAAS4HEP_TOKEN``) protects upload,
    delete, load and unload; ``private`` protects reads and inference too.
    ``max_batch``/``max_delay_ms`` are the dynamic batcher defaults (a model's
    ``serving.json`` overrides them; ``max_batch=1`` disables batching).
    ``threads`` is onnxruntime's intra-op threads per session (default: all
    cores), ``infer_threads`` how many onnxruntime calls may run at once.
    ``root_prefixes`` lists what ``predict_root`` may open: URL schemes and
    local directories (local paths are refused unless a directory is listed);
    remote URLs are refused too unless their host is in ``allow_remote``
    (``"*"``: any host), so by default no client can make the server connect
    anywhere. ``root_timeout`` bounds one ``predict_root`` request (seconds).
    ``max_cells`` bounds events x features of one request's preprocessing, and
    ``pre_timeout`` its time (it runs off the event loop).
    ``shared`` says that other processes serve the same ``repo_dir`` (workers).
    """
    from . import openapi, rootpredict, tfaas, v2

    repo = Repository(repo_dir, max_loaded=max_loaded, threads=threads, shared=shared)
    auth = Auth(load_token(token, token_file), private=private, allow_anonymous_admin=allow_anonymous_admin)
    state = ServerState(
        repo,
        auth,
        max_batch=max_batch,
        max_delay_ms=max_delay_ms,
        max_body=max_body,
        max_upload=max_upload,
        infer_threads=infer_threads,
        root_prefixes=tuple(_prefix(p) for p in root_prefixes),
        allow_remote=tuple(allow_remote),
        max_cells=max_cells,
        pre_timeout=pre_timeout,
        root_timeout=root_timeout,
    )
    routes = [
        Route("/", index_page, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi_route, methods=["GET"]),
        *tfaas.routes(),
        *v2.routes(),
        *rootpredict.routes(),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Instrument, metrics=state.metrics)],
        exception_handlers={
            ApiError: _api_error,
            Mlaas4hepError: _library_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=_lifespan(state),
    )
    app.state.server = state
    app.state.page = _page()
    app.state.openapi = orjson.dumps(openapi.document())
    return FastPath(app, state, v2.infer, tfaas.predict_json)


def _lifespan(state: ServerState) -> Callable[[Any], Any]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        state.close()

    return lifespan


def _prefix(p: str) -> str:
    if "://" in p:
        return p
    return str(Path(p).resolve()).rstrip("/") + "/"
